"""Calling any method of a gRPC service from its descriptor, with an empty request, to see how
the server answers before (or without) reading it."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc import aio

CALL_TIMEOUT_S = 10.0
Metadata = Sequence[tuple[str, str]]


def methods(service: ServiceDescriptor) -> list[MethodDescriptor]:
    """Every method the service declares."""
    return list(service.methods)


async def status_of(
    channel: aio.Channel, method: MethodDescriptor, metadata: Metadata
) -> tuple[grpc.StatusCode, str]:
    """The status an empty request to `method` ends with (a stream is read to its end)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request: Message = GetMessageClass(method.input_type)()
    response_type = GetMessageClass(method.output_type)
    serialize = type(request).SerializeToString
    deserialize = response_type.FromString
    try:
        if method.client_streaming:
            stream = channel.stream_stream(path, serialize, deserialize)
            call = stream(iter([request]), metadata=metadata, timeout=CALL_TIMEOUT_S)
            async for _ in call:
                pass
        elif method.server_streaming:
            server_stream = channel.unary_stream(path, serialize, deserialize)
            async for _ in server_stream(request, metadata=metadata, timeout=CALL_TIMEOUT_S):
                pass
        else:
            unary = channel.unary_unary(path, serialize, deserialize)
            await unary(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
    except aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)
