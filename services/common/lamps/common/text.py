"""Quoting a caller's strings back in errors and logs."""

from __future__ import annotations

# A status message travels in a trailer, which clients refuse past a few kilobytes, and an echo of
# a megabyte of name helps neither a model, a user nor a log: quotes are cut to this.
QUOTE_CHARS = 64


def shorten(text: str, limit: int = QUOTE_CHARS) -> str:
    """`text` as an error message or a log line quotes it: cut to `limit` characters."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
