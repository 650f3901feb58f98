"""The Python SDK for a LAMPS cluster's scheduler: `Client` (blocking) and `AsyncClient` (asyncio),
with the same methods.

    from lamps.client import Client, ReplaySegment, Tokens, ToolCallFinished

    with Client("127.0.0.1:50051", token="secret") as client:   # or Client.from_env()
        for event in client.generate("What is 2+3?", max_tokens=64):
            if isinstance(event, Tokens):
                print(event.text, end="", flush=True)
            elif isinstance(event, ToolCallFinished):
                print(f"\\n[{event.result.output}]")
        result = client.complete("Plan a trip", tools=["emulated.qa"])
        print(result.text, result.usage.completion_tokens, result.timings.ttft_s)

        submitted = client.submit("later", idempotency_key="job-42")  # same key: same id
        for event in client.watch(submitted.request_id, from_offset=0):
            ...
        client.cancel(submitted.request_id)
        print(client.get_request(submitted.request_id).state)   # RequestState.CANCELLED
        print(client.cluster_status().workers)

    async with AsyncClient.from_env() as client:
        async for event in client.generate("hi", replay=[ReplaySegment(20, "emulated.math", 1.0, 5),
                                                         ReplaySegment(10)]):
            ...

`generate` and `watch` yield typed events (`Accepted` first, `Finished` last, with
`StateChanged`, `Tokens`, `ToolCallStarted`, `ToolCallFinished` between), each with its
`request_id`, `offset` and `time`. Once a request is accepted, a stream that breaks with
UNAVAILABLE (a scheduler restarting or failing over) is resumed from the next offset, so nothing
is lost or seen twice. `from_env()` reads LAMPS_ADDRESS, LAMPS_TOKEN, LAMPS_TLS_CA_FILE,
LAMPS_TLS_CERT_FILE, LAMPS_TLS_KEY_FILE and LAMPS_TLS_SERVER_NAME. Every failure is a
`LampsError` (`.code`, `.message`); catch `InvalidRequest`, `NotFound`, `AlreadyExists`,
`Unauthenticated`, `Unavailable` or `ResourceExhausted` (`.retry_after_s`) by meaning.
"""

from lamps.client.aio import AsyncClient
from lamps.client.enums import FinishReason, RequestState, Strategy, ToolErrorCode, WorkerState
from lamps.client.errors import (
    AlreadyExists,
    InvalidRequest,
    LampsError,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from lamps.client.options import DEFAULT_ADDRESS, TLS, Connection, GenerateOptions, Reconnect
from lamps.client.result import Result, ToolCallRecord
from lamps.client.sync import Client
from lamps.client.types import (
    Accepted,
    ClusterStatus,
    Event,
    Finished,
    Prediction,
    ReplaySegment,
    RequestRecord,
    StateChanged,
    Submitted,
    Timings,
    Tokens,
    ToolCall,
    ToolCallFinished,
    ToolCallStarted,
    ToolError,
    ToolResult,
    Usage,
    WorkerStatus,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "TLS",
    "Accepted",
    "AlreadyExists",
    "AsyncClient",
    "Client",
    "ClusterStatus",
    "Connection",
    "Event",
    "FinishReason",
    "Finished",
    "GenerateOptions",
    "InvalidRequest",
    "LampsError",
    "NotFound",
    "Prediction",
    "Reconnect",
    "ReplaySegment",
    "RequestRecord",
    "RequestState",
    "ResourceExhausted",
    "Result",
    "StateChanged",
    "Strategy",
    "Submitted",
    "Timings",
    "Tokens",
    "ToolCall",
    "ToolCallFinished",
    "ToolCallRecord",
    "ToolCallStarted",
    "ToolError",
    "ToolErrorCode",
    "ToolResult",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "WorkerState",
    "WorkerStatus",
]
