"""What the sync and async clients share: TLS, the environment, request building, and the
bookkeeping that lets a Watch resume after the scheduler restarts."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import grpc

from lamps.client.errors import LampsError, Unavailable, from_rpc_error
from lamps.client.types import Event, ReplaySegment, event_from_proto
from lamps.common.channel import ClientTls
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb

DEFAULT_ADDRESS = "127.0.0.1:50051"
# Of several scheduler addresses (`ipv4:h1:p1,h2:p2`), calls go to the one whose health says
# this service is SERVING: the leader.
SCHEDULER_SERVICE = "lamps.v1.SchedulerService"


@dataclass(frozen=True)
class TLS:
    """Reach the scheduler over TLS: the CA to trust (None: the system's), a client pair for
    mutual TLS, and the name to expect in the server's certificate if not the target's host."""

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None
    server_name: str | None = None

    def client_tls(self) -> ClientTls:
        def path(value: str | Path | None) -> Path | None:
            return Path(value) if value is not None else None

        return ClientTls(
            ca_file=path(self.ca_file),
            cert_file=path(self.cert_file),
            key_file=path(self.key_file),
            server_name=self.server_name,
        )


@dataclass(frozen=True)
class Reconnect:
    """How a Watch (or a Generate past its first event) rides out a broken stream: up to
    `attempts` tries in a row without an event, waiting `initial_backoff_s` doubling to
    `max_backoff_s` between them (about 20 s in all by default, enough for a restart)."""

    attempts: int = 8
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_backoff_s, self.initial_backoff_s * 2**attempt))


DEFAULT_RECONNECT = Reconnect()


@dataclass(frozen=True)
class Connection:
    """Where and how to connect, as read from the environment by `from_env`."""

    target: str = DEFAULT_ADDRESS
    token: str | None = None
    tls: TLS | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Connection:
        """LAMPS_ADDRESS, LAMPS_TOKEN, and LAMPS_TLS_{CA,CERT,KEY}_FILE / LAMPS_TLS_SERVER_NAME
        (any of which turns TLS on)."""
        env = os.environ if environ is None else environ
        tls_values = {
            key: env.get(f"LAMPS_TLS_{key.upper()}") or None
            for key in ("ca_file", "cert_file", "key_file", "server_name")
        }
        tls = TLS(**tls_values) if any(tls_values.values()) else None
        return cls(
            target=env.get("LAMPS_ADDRESS") or DEFAULT_ADDRESS,
            token=env.get("LAMPS_TOKEN") or None,
            tls=tls,
        )


class GenerateOptions(TypedDict, total=False):
    """The keyword arguments of `generate`, `submit` and `complete`, with their defaults."""

    prompt_token_ids: Sequence[int] | None  # the prompt as token ids, instead of text
    max_tokens: int  # over the whole request, across tool calls; 0: the server's default
    temperature: float  # 0: greedy
    top_p: float  # 0: 1
    seed: int  # 0: unseeded
    stop: Iterable[str]  # strings that end the generation
    tools: Iterable[str]  # tools the model may call; empty: all registered tools
    replay: Sequence[ReplaySegment] | None  # exact lengths and tool calls (trace replay)
    labels: Mapping[str, str] | None  # kept on the request's record
    model: str  # as workers register it; empty: the cluster's only model


def build_request(
    prompt: str | None,
    *,
    prompt_token_ids: Sequence[int] | None = None,
    max_tokens: int = 0,
    temperature: float = 0.0,
    top_p: float = 0.0,
    seed: int = 0,
    stop: Iterable[str] = (),
    tools: Iterable[str] = (),
    replay: Sequence[ReplaySegment] | None = None,
    labels: Mapping[str, str] | None = None,
    model: str = "",
) -> pb.GenerateRequest:
    """The GenerateRequest for `generate`'s arguments; the scheduler validates it."""
    request = pb.GenerateRequest(
        prompt=prompt or "",
        prompt_token_ids=list(prompt_token_ids or ()),
        sampling=cpb.SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=list(stop)
        ),
        tools=list(tools),
        labels=dict(labels or {}),
        model=model,
    )
    if replay is not None:
        request.replay.CopyFrom(cpb.Replay(segments=[s.to_proto() for s in replay]))
    return request


@dataclass
class Resumption:
    """Tracks a stream of one request's events so that it can be resumed where it broke."""

    reconnect: Reconnect
    request_id: str | None = None
    next_offset: int = 0
    attempt: int = 0
    done: bool = field(default=False)
    # Whether the stream now open has delivered an event: one that ends cleanly without any is
    # a Watch from the end of a finished log, where there is nothing more to wait for.
    progressed: bool = field(default=False)

    def exhausted(self, error: grpc.RpcError | None) -> bool:
        """True when a stream that ended with `error` leaves nothing more to read."""
        return self.done or (error is None and not self.progressed and self.request_id is not None)

    def seen(self, raw: cpb.RequestEvent) -> Event | None:
        """Note an event received; returns it typed (None for a kind this SDK does not know)."""
        self.request_id = raw.request_id
        self.next_offset = raw.offset + 1
        self.attempt = 0
        self.progressed = True
        self.done = raw.HasField("finished")
        return event_from_proto(raw)

    def retry_after(self, error: grpc.RpcError | None) -> float:
        """The wait before resuming a stream that broke with `error` (None: it ended before the
        request did); raises the SDK error when it cannot or should not be resumed."""
        if error is not None:
            code = error.code()
            if code is not grpc.StatusCode.UNAVAILABLE or self.request_id is None:
                raise from_rpc_error(error) from None
        elif self.request_id is None:
            raise LampsError(grpc.StatusCode.UNKNOWN, "the stream ended before its first event")
        if self.attempt >= self.reconnect.attempts:
            detail = from_rpc_error(error).message if error is not None else "stream ended early"
            raise Unavailable(
                grpc.StatusCode.UNAVAILABLE,
                f"lost the events of {self.request_id} after {self.attempt} attempts to resume "
                f"from offset {self.next_offset}: {detail}",
            )
        delay = self.reconnect.delay(self.attempt)
        self.attempt += 1
        self.progressed = False
        return delay

    def watch_request(self) -> pb.WatchRequest:
        return pb.WatchRequest(request_id=self.request_id or "", from_offset=self.next_offset)
