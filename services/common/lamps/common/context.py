"""Per-call context carried in context variables, so logs anywhere in a call can name it."""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from typing import Any

from grpc import aio

# Metadata key a caller may set to choose the id; the server echoes it in the initial metadata.
REQUEST_ID_METADATA_KEY = "x-request-id"

request_id_var: ContextVar[str | None] = ContextVar("lamps_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the call being served by this task, if any."""
    return request_id_var.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def add_trailing_metadata(context: aio.ServicerContext[Any, Any], *pairs: tuple[str, str]) -> None:
    """Add `pairs` to the call's trailing metadata, keeping what is already set there (gRPC's
    setter replaces it all: the request id echoed by the observability interceptor, say)."""
    context.set_trailing_metadata((*(context.trailing_metadata() or ()), *pairs))
