"""Client channels between services and from users: bearer token and TLS in one place."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc import aio

# Streams carrying token logs and batched reports can be larger than gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024

CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Peers restart (a rollout, a crash): reconnect within seconds of their return, not after
    # gRPC's default backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)


# gRPC's own form for several addresses of one service: `ipv4:10.0.0.1:50051,10.0.0.2:50051`.
MULTI_ADDRESS_SCHEMES = ("ipv4", "ipv6")


def several_addresses(target: str) -> bool:
    """Whether `target` lists several addresses (`ipv4:h1:p1,h2:p2`): replicas of which only
    the one whose health says SERVING (the leader) should get calls."""
    scheme, _, rest = target.partition(":")
    return scheme in MULTI_ADDRESS_SCHEMES and "," in rest


def target_error(target: str) -> str | None:
    """Why `target` is not `host:port` or gRPC's `ipv4:host:port,host:port` (to follow the
    target in a message); None if it is."""
    scheme, _, rest = target.partition(":")
    addresses = rest.split(",") if scheme in MULTI_ADDRESS_SCHEMES else [target]
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            return "is not host:port, nor several addresses as ipv4:host:port,host:port"
    return None


def channel_options(
    target: str, health_service: str | None = None, tls: ClientTls | None = None
) -> list[tuple[str, Any]]:
    """CHANNEL_OPTIONS, plus, for a target of several addresses, gRPC's client-side health
    checking on `health_service`: calls go only to a replica that says SERVING for it (the
    leader; standbys say NOT_SERVING), and follow a new leader as soon as it says so."""
    options = list(CHANNEL_OPTIONS)
    several = several_addresses(target)
    if health_service and several:
        config = {
            # pick_first ignores health; round_robin over the healthy ones is "the leader".
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": health_service},
        }
        options.append(("grpc.service_config", json.dumps(config)))
    if tls is not None:
        # gRPC checks the certificate against the target's authority, which for several
        # addresses is the whole list: expect the first address's host instead.
        name = tls.server_name or (_first_host(target) if several else None)
        if name:
            options.append(("grpc.ssl_target_name_override", name))
    return options


def _first_host(target: str) -> str:
    first = target.partition(":")[2].split(",")[0]
    return first.rpartition(":")[0].strip("[]")


@dataclass(frozen=True)
class ClientTls:
    """What a client needs to reach a TLS server: the CA to trust, and its own pair for mTLS."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # Name to expect in the server's certificate when it differs from the target's host.
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path is not None else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


if TYPE_CHECKING:
    _UnaryUnary = aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = aio.UnaryUnaryClientInterceptor
    _UnaryStream = aio.UnaryStreamClientInterceptor
    _StreamUnary = aio.StreamUnaryClientInterceptor
    _StreamStream = aio.StreamStreamClientInterceptor


class _BearerToken:
    """Adds `authorization: Bearer <token>` to every call.

    An interceptor rather than call credentials, because gRPC sends call credentials only over
    secure channels and local mode runs on plaintext loopback. One instance per kind of call:
    grpc.aio files each interceptor under the first kind it is an instance of, so a single class
    of all four kinds would reach unary-unary calls only and streams would go out without the
    token.
    """

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: aio.ClientCallDetails) -> aio.ClientCallDetails:
        metadata = aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._header)
        return aio.ClientCallDetails(
            method=details.method,
            timeout=details.timeout,
            metadata=metadata,
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


class _UnaryUnaryToken(_BearerToken, _UnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _UnaryStreamToken(_BearerToken, _UnaryStream):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _StreamUnaryToken(_BearerToken, _StreamUnary):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with_token(details), requests)


class _StreamStreamToken(_BearerToken, _StreamStream):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with_token(details), requests)


_TOKEN_INTERCEPTORS = (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)


def open_channel(
    target: str,
    *,
    token: str | None = None,
    tls: ClientTls | None = None,
    health_service: str | None = None,
) -> aio.Channel:
    """An aio channel to `target` sending `token` on every call, over TLS if given. A target of
    several addresses (`ipv4:h1:p1,h2:p2`) reaches the one that serves `health_service`."""
    # The stubs type `interceptors` loosely; any of the four interceptor kinds is accepted.
    interceptors = cast(Any, [kind(token) for kind in _TOKEN_INTERCEPTORS] if token else None)
    options = channel_options(target, health_service, tls)
    if tls is None:
        return aio.insecure_channel(target, options=options, interceptors=interceptors)
    return aio.secure_channel(target, tls.credentials(), options=options, interceptors=interceptors)
