"""The flags every client command shares (`generate`, `status`, `bench`): where the scheduler is
and how to authenticate to it. A flag beats its environment variable, which beats the default."""

from __future__ import annotations

import argparse
import sys

from lamps.client import (
    DEFAULT_ADDRESS,
    TLS,
    AsyncClient,
    Client,
    LampsError,
    ResourceExhausted,
    Unavailable,
)
from lamps.client.options import Connection


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --address, --token and the --tls-* flags to a command's parser."""
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--address",
        help="the scheduler, host:port, or its replicas as ipv4:host:port,host:port (calls go to "
        f"the one that leads) [env LAMPS_ADDRESS] (default: {DEFAULT_ADDRESS})",
    )
    group.add_argument(
        "--token",
        help="bearer token the scheduler expects [env LAMPS_TOKEN]; prefer the variable, since "
        "flags show in process lists",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        help="connect over TLS, trusting the system's CAs (implied by any other --tls-* flag)",
    )
    group.add_argument("--tls-ca-file", help="PEM CA bundle to trust [env LAMPS_TLS_CA_FILE]")
    group.add_argument(
        "--tls-cert-file", help="PEM client certificate, for mutual TLS [env LAMPS_TLS_CERT_FILE]"
    )
    group.add_argument("--tls-key-file", help="PEM key of --tls-cert-file [env LAMPS_TLS_KEY_FILE]")
    group.add_argument(
        "--tls-server-name",
        help="name to expect in the server's certificate when it is not the address's host "
        "[env LAMPS_TLS_SERVER_NAME]",
    )


def connection_from_args(args: argparse.Namespace) -> Connection:
    """Where and how to connect: the flags, then LAMPS_* variables, then the defaults."""
    env = Connection.from_env()
    env_tls = env.tls or TLS()
    tls = TLS(
        ca_file=args.tls_ca_file or env_tls.ca_file,
        cert_file=args.tls_cert_file or env_tls.cert_file,
        key_file=args.tls_key_file or env_tls.key_file,
        server_name=args.tls_server_name or env_tls.server_name,
    )
    use_tls = args.tls or env.tls is not None or tls != TLS()
    return Connection(
        target=args.address or env.target,
        token=args.token or env.token,
        tls=tls if use_tls else None,
    )


def client_from_args(args: argparse.Namespace, *, timeout_s: float | None = None) -> Client:
    """A blocking client for the connection flags in `args`; exits 1 if a TLS file is
    unreadable."""
    conn = connection_from_args(args)
    try:
        return Client(conn.target, token=conn.token, tls=conn.tls, timeout_s=timeout_s)
    except OSError as exc:
        raise SystemExit(f"lamps: cannot read a TLS file: {exc}") from exc


def async_client_from_args(
    args: argparse.Namespace, *, timeout_s: float | None = None
) -> AsyncClient:
    """An asyncio client for the connection flags in `args`; exits 1 if a TLS file is
    unreadable. Create it inside the event loop that will use it."""
    conn = connection_from_args(args)
    try:
        return AsyncClient(conn.target, token=conn.token, tls=conn.tls, timeout_s=timeout_s)
    except OSError as exc:
        raise SystemExit(f"lamps: cannot read a TLS file: {exc}") from exc


def report_error(command: str, target: str, error: LampsError) -> int:
    """Print `lamps <command>: ...` for a failed call on stderr, naming the address when the
    scheduler could not be reached; returns the exit status 1."""
    if isinstance(error, Unavailable):
        print(f"lamps {command}: cannot reach the scheduler at {target}: {error}", file=sys.stderr)
    elif (
        isinstance(error, ResourceExhausted)
        and error.retry_after_s is not None
        and "retry" not in error.message
    ):
        print(f"lamps {command}: {error}; retry in {error.retry_after_s:g} s", file=sys.stderr)
    else:
        print(f"lamps {command}: {error}", file=sys.stderr)
    return 1
