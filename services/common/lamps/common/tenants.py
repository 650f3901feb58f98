"""Tenants: who a client token belongs to.

A token entry is either `token` (the shared tenant, named "") or `tenant=token`. The scheduler
keeps each request under the tenant that submitted it and answers other tenants as if it did not
exist. The auth interceptor sets `tenant_var` for every call it lets through; handlers read it
with `current_tenant()`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

# The tenant of calls made with a plain token, or to a service without tokens.
SHARED_TENANT = ""
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

tenant_var: ContextVar[str] = ContextVar("lamps_tenant", default=SHARED_TENANT)


def current_tenant() -> str:
    """The tenant of the call being served by this task ("" for the shared one)."""
    return tenant_var.get()


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One accepted bearer token and the tenant it stands for."""

    token: str
    tenant: str = SHARED_TENANT

    @classmethod
    def parse(cls, text: str) -> TokenEntry:
        """`tenant=token` or a plain `token`.

        Only a name of letters, digits, `_`, `.` and `-` before the first `=`, followed by
        something that does not start with `=`, makes a tenant: so base64 tokens, whose `=`
        is padding at the end, keep their plain meaning.
        """
        text = text.strip()
        name, sep, token = text.partition("=")
        if sep and token and not token.startswith("=") and _TENANT_NAME.fullmatch(name):
            return cls(token=token, tenant=name)
        return cls(token=text)


def parse_entries(entries: Iterable[str]) -> tuple[TokenEntry, ...]:
    """The entries, parsed; ValueError if one token is given to two tenants."""
    parsed = tuple(TokenEntry.parse(entry) for entry in entries if entry.strip())
    owners: dict[str, str] = {}
    for entry in parsed:
        owner = owners.setdefault(entry.token, entry.tenant)
        if owner != entry.tenant:
            raise ValueError(
                "one token is given to two tenants "
                f"({owner or 'the shared tenant'} and {entry.tenant or 'the shared tenant'}); "
                "each tenant needs its own token"
            )
    return parsed


def read_tokens_file(path: Path) -> tuple[str, ...]:
    """Token entries from a file: one per line; blank lines and `#` comments are skipped."""
    lines = path.read_text().splitlines()
    return tuple(
        stripped for line in lines if (stripped := line.strip()) and not stripped.startswith("#")
    )
