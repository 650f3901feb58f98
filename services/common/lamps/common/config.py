"""Typed configuration read from flags and `LAMPS_*` environment variables.

Each service declares one frozen dataclass; every field carries its help text in
`metadata["help"]`. A field `grace_seconds` is set by `--grace-seconds` or `LAMPS_GRACE_SECONDS`;
a flag beats the environment, which beats the default. Values are parsed by the field's type, so a
bad value fails at start-up with a message naming the flag or variable, never later.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lamps.common.tenants import parse_entries, read_tokens_file

ENV_PREFIX = "LAMPS_"

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names where it came from."""


def option(default: Any, help: str, *, secret: bool = False) -> Any:
    """A configuration field: its default, its help text, and whether to hide it in logs."""
    if isinstance(default, list | dict | set):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return dataclasses.field(default=default, metadata={"help": help, "secret": secret})


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected one of " + ", ".join(sorted(_TRUE | _FALSE)))


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, is optional) for `X | None`."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parser_for(tp: Any) -> Callable[[str], Any]:
    """A function turning the text of a flag or variable into a value of type `tp`."""
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is tuple:
        item = _parser_for(typing.get_args(inner)[0])
        return lambda text: tuple(item(part.strip()) for part in text.split(",") if part.strip())
    if inner is bool:
        base: Callable[[str], Any] = _parse_bool
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        enum_type = inner

        def base(text: str) -> Any:
            try:
                return enum_type(text.strip().lower())
            except ValueError:
                raise ValueError() from None  # _describe() already lists the choices

    elif inner in (int, float):
        number = inner

        def base(text: str) -> Any:
            try:
                return number(text)
            except ValueError:
                raise ValueError() from None

    elif inner in (str, Path):
        base = inner
    else:
        raise TypeError(f"unsupported configuration type {tp!r}")
    if optional:
        return lambda text: None if text.strip() == "" else base(text)
    return base


def _describe(tp: Any) -> str:
    inner, _ = _unwrap_optional(tp)
    if typing.get_origin(inner) is tuple:
        return "a comma-separated list"
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in inner)
    names = {int: "an integer", float: "a number", bool: "true or false", Path: "a path"}
    return names.get(inner, "text")


def _fields(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one flag per field of the dataclass `cls`, each with its help and variable name."""
    for field, tp in _fields(cls):
        help_text = f"{field.metadata.get('help', '')} [env {env_name(field.name)}]"
        if not field.metadata.get("secret"):
            help_text += f" (default: {_show_default(field.default)})"
        inner, _ = _unwrap_optional(tp)
        if inner is bool:
            parser.add_argument(
                flag_name(field.name),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            # A list may be given as one comma-separated value or by repeating the flag.
            repeated = typing.get_origin(inner) is tuple
            parser.add_argument(
                flag_name(field.name),
                dest=field.name,
                default=None,
                action="append" if repeated else "store",
                metavar=field.name.upper(),
                help=help_text,
            )


def _show_default(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def load(
    cls: type[C], args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> C:
    """Build `cls` from parsed flags, then the environment, then the defaults.

    Raises ConfigError naming the flag or variable whose value is wrong.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field, tp in _fields(cls):
        raw = getattr(args, field.name, None) if args is not None else None
        source = flag_name(field.name)
        if raw is None and env_name(field.name) in environ:
            raw, source = environ[env_name(field.name)], env_name(field.name)
        if raw is None:
            continue
        if isinstance(raw, bool):
            values[field.name] = raw
            continue
        if isinstance(raw, list):  # a repeated flag
            raw = ",".join(raw)
        try:
            values[field.name] = _parser_for(tp)(raw)
        except ValueError as exc:
            raise ConfigError(
                f"{source}={raw!r} is not {_describe(tp)}: {exc}"
                if str(exc)
                else f"{source}={raw!r} is not {_describe(tp)}"
            ) from None
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def parse(cls: type[C], argv: Sequence[str], prog: str | None = None) -> C:
    """Parse `argv` into `cls`; on a bad value print the error and exit with status 2."""
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser, cls)
    args = parser.parse_args(argv)
    try:
        return load(cls, args)
    except ConfigError as exc:
        parser.error(str(exc))


def redacted(config: Any) -> dict[str, Any]:
    """The configuration as a dict for logs, with secrets replaced."""
    shown: dict[str, Any] = {}
    for field, _ in _fields(type(config)):
        value = getattr(config, field.name)
        if field.metadata.get("secret") and value:
            shown[field.name] = "<redacted>"
        elif isinstance(value, enum.Enum):
            shown[field.name] = value.value
        elif isinstance(value, Path):
            shown[field.name] = str(value)
        else:
            shown[field.name] = value
    return shown


class LogFormat(enum.Enum):
    """How log records are written to standard error."""

    JSON = "json"
    TEXT = "text"


class EventLoop(enum.Enum):
    """Which asyncio event loop runs the service."""

    AUTO = "auto"
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """What every service's server needs: where to listen, auth, TLS, shutdown and logs.

    A service's own configuration subclasses this, adds its fields and overrides the default ports.
    """

    host: str = option("0.0.0.0", "address the gRPC server listens on")  # noqa: S104
    port: int = option(50051, "gRPC port; 0 picks a free one")
    metrics_host: str = option("0.0.0.0", "address the Prometheus HTTP endpoint listens on")  # noqa: S104
    metrics_port: int = option(9400, "Prometheus HTTP port (/metrics); 0 picks a free one")
    auth_tokens: tuple[str, ...] = option(
        (),
        "bearer tokens accepted from callers, comma-separated (or the flag repeated); an entry "
        "tenant=token gives the token to a tenant, a plain token to the shared tenant; none "
        "turns authentication off",
        secret=True,
    )
    auth_tokens_file: Path | None = option(
        None,
        "file of more --auth-tokens entries, one per line (# starts a comment); read at start-up",
    )
    tls_cert_file: Path | None = option(
        None, "PEM certificate chain; with --tls-key-file, serve TLS"
    )
    tls_key_file: Path | None = option(None, "PEM private key of --tls-cert-file")
    tls_client_ca_file: Path | None = option(
        None, "PEM CA bundle; when set, callers must present a certificate it signed (mutual TLS)"
    )
    grace_seconds: float = option(
        10.0, "on SIGTERM, seconds in-flight calls get to finish before they are cancelled"
    )
    drain_delay_seconds: float = option(
        0.0,
        "on SIGTERM, seconds to keep serving while health says NOT_SERVING, so load balancers "
        "stop sending new calls first",
    )
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: LogFormat = option(LogFormat.JSON, "log record format")
    event_loop: EventLoop = option(EventLoop.AUTO, "event loop; auto uses uvloop when installed")

    def __post_init__(self) -> None:
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"{flag_name(name)}={value} is not a port (0-65535)")
        for name in ("grace_seconds", "drain_delay_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag_name(name)} must not be negative")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(
                f"--log-level={self.log_level!r} is not DEBUG, INFO, WARNING or ERROR"
            )
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("--tls-cert-file and --tls-key-file must be given together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file")
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_tokens_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"{flag_name(name)}={path}: no such file")
        try:
            parse_entries(self.client_tokens())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--auth-tokens: {exc}") from None

    def client_tokens(self) -> tuple[str, ...]:
        """The token entries of --auth-tokens and --auth-tokens-file together."""
        from_file = () if self.auth_tokens_file is None else read_tokens_file(self.auth_tokens_file)
        return (*self.auth_tokens, *from_file)

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_file is not None
