"""One way to boot a service: `serve(config, services)`.

Every service gets the same server: grpc.aio with health checking and reflection always on,
Prometheus metrics over HTTP, request ids in logs, bearer-token auth where tokens are configured,
INVALID_ARGUMENT for requests that cannot be decoded,
TLS from certificate files, and a graceful drain on SIGTERM: health goes NOT_SERVING, calls in
flight get `grace_seconds` to finish, then the service's resources close and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AsyncHealthServicer
from grpc_reflection.v1alpha import reflection

from lamps.common import config as cfg
from lamps.common.channel import CHANNEL_OPTIONS
from lamps.common.decoding import DecodingInterceptor
from lamps.common.interceptors import AuthInterceptor, ObservabilityInterceptor
from lamps.common.logs import configure_logging
from lamps.common.metrics import BUILD_INFO, MetricsEndpoint, start_metrics_endpoint
from lamps.common.version import package_version

log = logging.getLogger("lamps.server")

Lifespan = Callable[[], AbstractAsyncContextManager[None]]
# Awaited once the server is up; health says NOT_SERVING until it returns (a worker: registered).
Readiness = Callable[[], Awaitable[object]]
# Awaited when the drain begins, before the grace for calls in flight: a service ends its
# long-lived streams here (the scheduler hands over and closes its workers' streams), so that
# the grace is not spent waiting on calls that would never end by themselves.
DrainHook = Callable[[], Awaitable[object]]

SERVER_OPTIONS: Sequence[tuple[str, Any]] = (
    *CHANNEL_OPTIONS,
    # Two processes must never share a port silently; gRPC turns SO_REUSEPORT on by default.
    ("grpc.so_reuseport", 0),
)


@dataclass(frozen=True)
class Service:
    """One gRPC service a server hosts."""

    # Full name, as in health checks and reflection: `lamps.v1.SchedulerService`.
    name: str
    # Adds the servicer to a server (the generated `add_XxxServicer_to_server`, bound).
    add_to_server: Callable[[aio.Server], None]
    # Bearer tokens its callers must present; empty leaves it open.
    auth_tokens: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        descriptor: ServiceDescriptor,
        add: Callable[[Any, aio.Server], None],
        servicer: object,
        auth_tokens: Iterable[str] = (),
    ) -> Service:
        """A service from its descriptor, its generated `add_..._to_server` and a servicer."""
        return cls(
            name=descriptor.full_name,
            add_to_server=lambda server: add(servicer, server),
            auth_tokens=frozenset(auth_tokens),
        )


class ServerStartError(RuntimeError):
    """The server could not start: a port in use, unreadable certificates, a failing lifespan."""


class Server:
    """A running gRPC server with its metrics endpoint; for `serve()` and in-process tests."""

    def __init__(
        self,
        config: cfg.ServerConfig,
        services: Sequence[Service],
        *,
        lifespan: Lifespan | None = None,
        readiness: Readiness | None = None,
        on_drain: DrainHook | None = None,
    ) -> None:
        self.config = config
        self.services = tuple(services)
        self._lifespan = lifespan
        self._readiness = readiness
        self._on_drain = on_drain
        self._ready_task: asyncio.Task[None] | None = None
        self._health = AsyncHealthServicer()
        self._resources = AsyncExitStack()
        self._server: aio.Server | None = None
        self._metrics: MetricsEndpoint | None = None
        self._abandon: asyncio.Future[None] | None = None
        # Services set NOT_SERVING by `set_serving` before the server started (a standby
        # scheduler learns its role in its lifespan): start-up must not mark them SERVING.
        self._held_back: set[str] = set()
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> None:
        """Enter the lifespan, bind the ports, start serving, and mark every service SERVING."""
        try:
            if self._lifespan is not None:
                await self._resources.enter_async_context(self._lifespan())
            server = self._build()
            self.port = self._bind(server)
            self._metrics = self._start_metrics()
        except BaseException:
            await self._resources.aclose()
            raise
        self.metrics_port = self._metrics.port
        self._server = server
        await server.start()
        if self._readiness is None:
            await self._set_serving()
        else:
            for name in ("", *(s.name for s in self.services)):
                await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            self._ready_task = asyncio.create_task(self._serve_when_ready(self._readiness))
        log.info(
            "serving",
            extra={
                "port": self.port,
                "metrics_port": self.metrics_port,
                "tls": self.config.tls_enabled,
                "auth": {s.name: bool(s.auth_tokens) for s in self.services},
                "services": [s.name for s in self.services],
            },
        )

    async def _set_serving(self) -> None:
        for name in ("", *(s.name for s in self.services)):
            if name not in self._held_back:
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def _serve_when_ready(self, readiness: Readiness) -> None:
        await readiness()
        await self._set_serving()
        log.info("ready")

    def _build(self) -> aio.Server:
        server = aio.server(
            interceptors=[
                ObservabilityInterceptor(),
                AuthInterceptor({s.name: s.auth_tokens for s in self.services}),
                DecodingInterceptor(),
            ],
            options=SERVER_OPTIONS,
        )
        for service in self.services:
            service.add_to_server(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                *(s.name for s in self.services),
                health.SERVICE_NAME,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        return server

    def _bind(self, server: aio.Server) -> int:
        address = f"{self.config.host}:{self.config.port}"
        try:
            if self.config.tls_enabled:
                return server.add_secure_port(address, _server_credentials(self.config))
            return server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ServerStartError(
                f"cannot listen on {address}: {exc} (is another process using the port?)"
            ) from exc

    def _start_metrics(self) -> MetricsEndpoint:
        address = f"{self.config.metrics_host}:{self.config.metrics_port}"
        try:
            return start_metrics_endpoint(self.config.metrics_host, self.config.metrics_port)
        except OSError as exc:
            raise ServerStartError(
                f"cannot serve metrics on {address}: {exc.strerror or exc} "
                "(is another process using the port?)"
            ) from exc

    async def stop(self) -> None:
        """Drain: NOT_SERVING, optional delay, finish calls in flight within the grace, close."""
        if self._server is None:
            return
        if self._ready_task is not None:
            self._ready_task.cancel()
        await self._health.enter_graceful_shutdown()
        log.info("draining", extra={"grace_seconds": self.config.grace_seconds})
        if self.config.drain_delay_seconds:
            await asyncio.sleep(self.config.drain_delay_seconds)
        if self._on_drain is not None:
            await self._on_drain()
        await self._server.stop(self.config.grace_seconds)
        self._server = None
        await self._resources.aclose()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        log.info("stopped")

    async def run_until_signal(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then stop gracefully.

        A second signal during the drain cancels the calls still in flight at once.
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        await stop.wait()
        log.info("signal received, shutting down")
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._cut_drain_short)
        await self.stop()

    async def set_serving(self, names: Iterable[str], serving: bool) -> None:
        """Report these services SERVING or NOT_SERVING on the health service (a standby
        replica is alive but should get no traffic); ignored once the drain has begun."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in names:
            if serving:
                self._held_back.discard(name)
            else:
                self._held_back.add(name)
            await self._health.set(name, status)

    def _cut_drain_short(self) -> None:
        if self._server is not None:
            log.warning("second signal: cancelling the calls still in flight")
            self._abandon = asyncio.ensure_future(self._server.stop(0))


def _server_credentials(config: cfg.ServerConfig) -> grpc.ServerCredentials:
    assert config.tls_cert_file is not None
    assert config.tls_key_file is not None
    try:
        pair = (config.tls_key_file.read_bytes(), config.tls_cert_file.read_bytes())
        client_ca = (
            config.tls_client_ca_file.read_bytes()
            if config.tls_client_ca_file is not None
            else None
        )
    except OSError as exc:
        raise ServerStartError(f"cannot read TLS files: {exc}") from exc
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def run_async(main: Coroutine[Any, Any, None], loop: cfg.EventLoop) -> None:
    """Run `main` on the configured event loop (uvloop when asked or, on auto, when installed)."""
    if loop is not cfg.EventLoop.ASYNCIO:
        try:
            import uvloop
        except ImportError:
            if loop is cfg.EventLoop.UVLOOP:
                raise SystemExit("--event-loop=uvloop but uvloop is not installed") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def serve(
    name: str,
    config: cfg.ServerConfig,
    services: Sequence[Service],
    *,
    lifespan: Lifespan | None = None,
    readiness: Readiness | None = None,
    attach: Callable[[Server], None] | None = None,
    on_drain: DrainHook | None = None,
) -> int:
    """Configure logging, run the server until a signal, and return the process exit status.

    `attach` receives the server before it starts, for services that change their health.
    """
    configure_logging(name, config.log_level, config.log_format)
    BUILD_INFO.info({"service": name, "version": package_version()})
    log.info("starting", extra={"config": cfg.redacted(config)})
    server = Server(config, services, lifespan=lifespan, readiness=readiness, on_drain=on_drain)
    if attach is not None:
        attach(server)
    try:
        run_async(server.run_until_signal(), config.event_loop)
    except ServerStartError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
