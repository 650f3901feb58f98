"""A protocol harness: a real WorkerGatewayService on loopback, written for the agent's tests.

It answers every Register with Registered, records every report, and sends whatever a test puts
in a connection's outbox. Its views deduplicate the way the protocol asks receivers to (token
deltas by start_index, everything else by content), and fail loudly on contradictions: a token
index sent twice with different ids, a gap in a token stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from lamps.common.config import LogFormat, ServerConfig
from lamps.common.server import Server, Service
from lamps.v1 import common_pb2
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc

CLUSTER_TOKEN = "cluster-token-for-tests"
EOF: Any = aio.EOF  # type: ignore[attr-defined]
WAIT_S = 60.0  # a bound for a broken worker; passing tests never come near it


@dataclass
class Connection:
    """One Connect stream: the worker's Register, its reports, and what to send it."""

    register: pb.Register
    reports: list[pb.Report] = field(default_factory=list)
    outbox: asyncio.Queue[pb.ConnectResponse] = field(default_factory=asyncio.Queue)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, **message: Any) -> None:
        """Queue one ConnectResponse, built from its oneof field: `send(admit=pb.Admit(...))`."""
        await self.outbox.put(pb.ConnectResponse(**message))


class Gateway(pb_grpc.WorkerGatewayServiceServicer):
    """The servicer: records and scripts (see the module docstring)."""

    def __init__(self, *, report_interval_s: float = 0.05, lease_s: float = 30.0) -> None:
        self.report_interval_s = report_interval_s
        self.lease_s = lease_s
        self.connections: list[Connection] = []
        self.drop_at_next_register: list[str] = []
        self._changed = asyncio.Event()

    async def Connect(  # type: ignore[override]  # reads and writes through the context
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: Any
    ) -> None:
        first = await context.read()
        if first is EOF or first.WhichOneof("message") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Register first")
        connection = Connection(first.register)
        self.connections.append(connection)
        registered = pb.Registered(
            worker_id=first.register.worker_id,
            report_interval_seconds=self.report_interval_s,
            lease_seconds=self.lease_s,
            drop_request_ids=self.drop_at_next_register,
        )
        self.drop_at_next_register = []
        await context.write(pb.ConnectResponse(registered=registered))
        self._changed.set()
        reader = asyncio.create_task(self._record(context, connection))
        try:
            while True:
                getter = asyncio.create_task(connection.outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                await context.write(getter.result())
        finally:
            reader.cancel()
            connection.closed.set()
            self._changed.set()

    async def _record(self, context: Any, connection: Connection) -> None:
        while (message := await context.read()) is not EOF:
            connection.reports.append(message.report)
            self._changed.set()

    # What tests wait for and read ----------------------------------------------------------------

    async def wait(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def connection(self, index: int = 0) -> Connection:
        await self.wait(lambda: len(self.connections) > index)
        return self.connections[index]

    @property
    def reports(self) -> list[pb.Report]:
        return [r for c in self.connections for r in c.reports]

    def updates(self, request_id: str, kind: str | None = None) -> list[pb.RequestUpdate]:
        """The request's updates over every connection, in arrival order."""
        return [
            u
            for r in self.reports
            for u in r.updates
            if u.request_id == request_id and (kind is None or u.WhichOneof("update") == kind)
        ]

    def distinct(self, request_id: str, kind: str) -> list[pb.RequestUpdate]:
        """Updates of one kind, re-sent copies removed."""
        seen: dict[bytes, pb.RequestUpdate] = {}
        for update in self.updates(request_id, kind):
            seen.setdefault(update.SerializeToString(deterministic=True), update)
        return list(seen.values())

    def tokens(self, request_id: str) -> list[int]:
        """The request's generated tokens from index 0, assembled from every delta."""
        by_index: dict[int, int] = {}
        for update in self.updates(request_id, "tokens"):
            for offset, token in enumerate(update.tokens.token_ids):
                index = update.tokens.start_index + offset
                assert by_index.setdefault(index, token) == token, f"index {index} sent twice"
        assert sorted(by_index) == list(range(len(by_index))), "a gap in the token stream"
        return [by_index[i] for i in range(len(by_index))]

    def ended(self, request_id: str) -> bool:
        return any(self.distinct(request_id, kind) for kind in ("completed", "released", "failed"))

    def refusals(self, request_id: str) -> list[pb.Refused]:
        return [u.refused for u in self.updates(request_id, "refused")]


@dataclass(frozen=True)
class ServerTls:
    """The harness's certificate, and the CA its clients' certificates must chain to (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


class LoopbackGateway(Gateway):
    """The harness served on loopback, guarded by the cluster token; `stop()` ends it at once,
    as a crashed scheduler would, and `start()` brings it back on the same port."""

    def __init__(self, tls: ServerTls | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self.port = 0
        self.tls = tls
        self._server: Server | None = None

    @property
    def target(self) -> str:
        # TLS certificates name localhost; plaintext takes the address itself.
        return f"{'localhost' if self.tls else '127.0.0.1'}:{self.port}"

    async def start(self) -> None:
        config = ServerConfig(
            host="127.0.0.1",
            port=self.port,
            metrics_host="127.0.0.1",
            metrics_port=0,
            grace_seconds=0.0,
            log_format=LogFormat.TEXT,
            tls_cert_file=self.tls.cert_file if self.tls else None,
            tls_key_file=self.tls.key_file if self.tls else None,
            tls_client_ca_file=self.tls.client_ca_file if self.tls else None,
        )
        service = Service.of(
            pb.DESCRIPTOR.services_by_name["WorkerGatewayService"],
            pb_grpc.add_WorkerGatewayServiceServicer_to_server,
            self,
            [CLUSTER_TOKEN],
        )
        self._server = Server(config, [service])
        await self._server.start()
        self.port = self._server.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll for a state nothing announces (a log record, a process exit)."""
    for _ in range(int(WAIT_S / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the state never came")


def admit(
    request_id: str,
    segments: Sequence[tuple[int, str]],
    *,
    max_new_tokens: int = 100_000,
    strategy: common_pb2.Strategy.ValueType = common_pb2.STRATEGY_PRESERVE,
    prompt: str = "what is two plus two",
    rank: float = 0.0,
) -> pb.Admit:
    """An Admit replaying `segments` of (output tokens, tool called after them or "")."""
    replay = common_pb2.Replay(
        segments=[
            common_pb2.ReplaySegment(
                output_tokens=n, tool=tool, tool_duration_seconds=0.1, tool_output_tokens=3
            )
            for n, tool in segments
        ]
    )
    return pb.Admit(
        request_id=request_id,
        rank=rank,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        strategy=strategy,
        replay=replay,
    )
