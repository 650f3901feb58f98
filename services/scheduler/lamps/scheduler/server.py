"""The scheduler's gRPC server: the front door (SchedulerService) and the worker gateway
(WorkerGatewayService), over the lifecycle in lifecycle.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from grpc import aio

from lamps.common.channel import ClientTls
from lamps.common.context import add_trailing_metadata
from lamps.common.server import Server, ServerStartError, Service, serve
from lamps.common.tenants import current_tenant
from lamps.model.cost import get_profile
from lamps.scheduler.clients import PredictorClient, ToolClient
from lamps.scheduler.config import SchedulerConfig
from lamps.scheduler.embedded import embedded_redis
from lamps.scheduler.leader import LeaderElection
from lamps.scheduler.lifecycle import Scheduler, Settings
from lamps.scheduler.placement import WorkerHandle
from lamps.scheduler.policy import create_policy
from lamps.scheduler.queue import Store, StoreError, open_store
from lamps.scheduler.ranking import ReplayPredictions
from lamps.scheduler.validation import Limits, RequestError, validate_request_id
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

Context = aio.ServicerContext[object, object]
SERVICE_NAMES = ("lamps.v1.SchedulerService", "lamps.v1.WorkerGatewayService")
# Whole seconds a shed client should wait before it retries (the SDK's ResourceExhausted reads it).
RETRY_AFTER_METADATA_KEY = "retry-after"


class SchedulerApp:
    """The running parts, built when the server starts (`running`)."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.replica_id = config.replica_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._scheduler: Scheduler | None = None
        self._server: Server | None = None
        self._stop_leading: Callable[[], Awaitable[None]] | None = None

    async def drain(self) -> None:
        """SIGTERM: hand over at once. Stop scheduling, close the workers' streams (they
        reconnect to the new leader) and the clients' (they Watch again from their offset), and
        give up the leader lease, so neither the grace period nor a standby waits on us."""
        if self._stop_leading is not None:
            await self._stop_leading()

    def attach(self, server: Server) -> None:
        """The server whose health tells load balancers whether this replica leads."""
        self._server = server

    async def _show_role(self, leading: bool) -> None:
        # Standbys are alive (the overall status stays SERVING, so liveness probes pass) but
        # their services say NOT_SERVING, so a readiness probe on them keeps clients and
        # workers on the leader.
        if self._server is not None:
            await self._server.set_serving(SERVICE_NAMES, leading)

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the scheduler is starting")
        return self._scheduler

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open the store and clients, run the election; undo it all on shutdown."""
        async with contextlib.AsyncExitStack() as stack:
            url = self.config.redis_url
            if url is None:
                url = await stack.enter_async_context(embedded_redis())
                log.warning("no --redis-url: using an embedded redis-server (local use only)")
            store = self._open_store(url)
            stack.push_async_callback(store.close)
            scheduler = self._build(store)
            stack.push_async_callback(scheduler.predictor.close)
            stack.push_async_callback(scheduler.tools.close)
            await scheduler.tools.refresh()
            scheduler.tools.start()
            try:
                scheduler.predictor.stats = await store.tool_stats()
            except StoreError as exc:
                raise _start_error(f"cannot reach the store at start-up: {exc}") from exc
            election = LeaderElection(
                store,
                scheduler,
                self.replica_id,
                self.config.leader_lease_seconds,
                on_role=self._show_role,
            )
            await election.attempt()
            elector = asyncio.get_running_loop().create_task(election.run())

            async def stop_leading() -> None:
                await _cancel(elector)
                await scheduler.close()
                await election.resign()

            self._stop_leading = _once(stop_leading)
            stack.push_async_callback(self._stop_leading)
            self._scheduler = scheduler
            yield

    def _open_store(self, url: str) -> Store:
        try:
            return open_store(
                url,
                prefix=self.config.redis_prefix,
                worker_lease_seconds=self.config.worker_lease_seconds,
                retention_seconds=self.config.retention_seconds,
            )
        except ValueError as exc:
            raise _start_error(str(exc)) from exc

    def _build(self, store: Store) -> Scheduler:
        config = self.config
        cost = get_profile(config.cost_profile)
        policy = create_policy(config.policy, cost, config.starvation_threshold)
        tls = None
        if config.client_tls_ca_file is not None or config.client_tls_cert_file is not None:
            tls = ClientTls(
                ca_file=config.client_tls_ca_file,
                cert_file=config.client_tls_cert_file,
                key_file=config.client_tls_key_file,
            )
        limits = Limits(
            max_prompt_chars=config.max_prompt_chars,
            max_prompt_tokens=config.max_prompt_tokens,
            max_tokens=config.max_tokens_limit,
            max_replay_segments=config.max_replay_segments,
            needs_replay=policy.needs_truth,
        )
        return Scheduler(
            store=store,
            policy=policy,
            cost=cost,
            predictor=PredictorClient(
                config.predictor_address,
                token=config.predictor_token,
                tls=tls,
                timeout_s=config.predictor_timeout_seconds,
            ),
            tools=ToolClient(
                config.tool_runner_address,
                token=config.tool_runner_token,
                tls=tls,
                timeout_s=config.tool_timeout_seconds,
            ),
            settings=Settings(
                replica_id=self.replica_id,
                limits=limits,
                worker_lease_s=config.worker_lease_seconds,
                report_interval_s=config.report_interval_seconds,
                time_scale=config.time_scale,
                replay_predictions=ReplayPredictions(config.replay_predictions),
                max_waiting_requests=config.max_waiting_requests,
            ),
            on_lost_leadership=_restart_as_standby,
        )


def _start_error(message: str) -> Exception:
    return ServerStartError(message)


async def _cancel(task: asyncio.Task[None]) -> None:
    # A cancellation that lands inside a Redis command can be swallowed by the client library,
    # leaving the task running on (a scheduler that could not bind its port then never exited):
    # ask again until the task has ended.
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)
    if not task.cancelled() and task.exception() is not None:
        log.warning("the leader election ended with an error", exc_info=task.exception())


def _restart_as_standby() -> None:
    """A replica that lost its lease exits through the graceful path; its supervisor restarts
    it, and it comes back as a standby (its in-memory state is stale by then)."""
    os.kill(os.getpid(), signal.SIGTERM)


async def _abort(context: Context, error: RequestError | StoreError) -> None:
    if isinstance(error, StoreError):
        log.warning("the store failed a client call", extra={"error": str(error)})
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"the scheduler cannot reach its store right now ({error}); retry: every request "
            "it accepted is kept",
        )
    else:
        if error.retry_after_s is not None:
            add_trailing_metadata(context, (RETRY_AFTER_METADATA_KEY, str(error.retry_after_s)))
        await context.abort(error.code, error.message)


class SchedulerServicer(pb_grpc.SchedulerServiceServicer):
    """The front door."""

    def __init__(self, app: SchedulerApp) -> None:
        self._app = app

    async def Generate(
        self, request: pb.GenerateRequest, context: Context
    ) -> AsyncIterator[pb.GenerateResponse]:
        try:
            scheduler = self._app.scheduler
            tenant = current_tenant()
            request_id, _ = await scheduler.submit(request, tenant=tenant)
            async for event in scheduler.watch(request_id, 0, tenant):
                yield pb.GenerateResponse(event=event)
        except (RequestError, StoreError) as error:
            await _abort(context, error)

    async def Submit(self, request: pb.SubmitRequest, context: Context) -> pb.SubmitResponse:
        try:
            request_id, created = await self._app.scheduler.submit(
                request.request, request.idempotency_key, current_tenant()
            )
        except (RequestError, StoreError) as error:
            await _abort(context, error)
        return pb.SubmitResponse(request_id=request_id, created=created)

    async def Watch(
        self, request: pb.WatchRequest, context: Context
    ) -> AsyncIterator[pb.WatchResponse]:
        try:
            validate_request_id(request.request_id)
            async for event in self._app.scheduler.watch(
                request.request_id, request.from_offset, current_tenant()
            ):
                yield pb.WatchResponse(event=event)
        except (RequestError, StoreError) as error:
            await _abort(context, error)

    async def Cancel(self, request: pb.CancelRequest, context: Context) -> pb.CancelResponse:
        try:
            validate_request_id(request.request_id)
            state = await self._app.scheduler.cancel(request.request_id, current_tenant())
        except (RequestError, StoreError) as error:
            await _abort(context, error)
        return pb.CancelResponse(state=state)  # type: ignore[arg-type]

    async def GetRequest(
        self, request: pb.GetRequestRequest, context: Context
    ) -> pb.GetRequestResponse:
        try:
            validate_request_id(request.request_id)
            record = await self._app.scheduler.record(request.request_id, current_tenant())
        except (RequestError, StoreError) as error:
            await _abort(context, error)
        return pb.GetRequestResponse(record=record)

    async def ClusterStatus(
        self, request: pb.ClusterStatusRequest, context: Context
    ) -> pb.ClusterStatusResponse:
        try:
            return self._app.scheduler.status()
        except (RequestError, StoreError) as error:
            await _abort(context, error)
            raise  # unreachable: abort raises


class WorkerGatewayServicer(pb_grpc.WorkerGatewayServiceServicer):
    """Where workers connect: Register first, then Reports; instructions flow back."""

    def __init__(self, app: SchedulerApp) -> None:
        self._app = app

    async def Connect(
        self, request_iterator: AsyncIterator[pb.ConnectRequest], context: Context
    ) -> AsyncIterator[pb.ConnectResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if first.WhichOneof("message") != "register":
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the first message on a Connect stream must be a Register",
            )
        outbox: asyncio.Queue[pb.ConnectResponse | None] = asyncio.Queue()
        try:
            scheduler = self._app.scheduler
            worker, registered = scheduler.register(first.register, outbox)
        except RequestError as error:
            await _abort(context, error)
        yield pb.ConnectResponse(registered=registered)
        reader = asyncio.get_running_loop().create_task(
            self._read(scheduler, worker, request_iterator, outbox)
        )
        try:
            while (message := await outbox.get()) is not None:
                yield message
        finally:
            reader.cancel()
            scheduler.disconnected(worker, outbox)

    async def _read(
        self,
        scheduler: Scheduler,
        worker: WorkerHandle,
        request_iterator: AsyncIterator[pb.ConnectRequest],
        outbox: asyncio.Queue[pb.ConnectResponse | None],
    ) -> None:
        try:
            async for message in request_iterator:
                if message.HasField("report"):
                    if worker.outbox is outbox:
                        scheduler.report(worker, message.report)
                    continue
                outbox.put_nowait(
                    pb.ConnectResponse(
                        rejected=pb.Rejected(
                            code=grpc.StatusCode.FAILED_PRECONDITION.value[0],
                            message="this stream is already registered; send Reports",
                        )
                    )
                )
        except (aio.AioRpcError, aio.AbortError, asyncio.CancelledError):
            pass  # the stream ended (an undecodable report has already been answered)
        except Exception:
            # A bug must not pass silently: log it and close the stream; the worker reconnects.
            log.exception("failed to apply a worker's report", extra={"worker": worker.worker_id})
        finally:
            outbox.put_nowait(None)


def services(app: SchedulerApp) -> list[Service]:
    """The scheduler's services: clients present their tokens, workers the cluster tokens."""
    return [
        Service.of(
            pb.DESCRIPTOR.services_by_name["SchedulerService"],
            pb_grpc.add_SchedulerServiceServicer_to_server,
            SchedulerServicer(app),
            app.config.client_tokens(),
        ),
        Service.of(
            pb.DESCRIPTOR.services_by_name["WorkerGatewayService"],
            pb_grpc.add_WorkerGatewayServiceServicer_to_server,
            WorkerGatewayServicer(app),
            app.config.cluster_tokens,
        ),
    ]


def _once(action: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """`action`, run at most once however often it is awaited (drain, then shutdown)."""
    task: asyncio.Task[None] | None = None

    async def run() -> None:
        nonlocal task
        if task is None:
            task = asyncio.ensure_future(action())
        await asyncio.shield(task)

    return run


def main(config: SchedulerConfig) -> int:
    app = SchedulerApp(config)
    return serve(
        "scheduler",
        config,
        services(app),
        lifespan=app.running,
        attach=app.attach,
        on_drain=app.drain,
    )
