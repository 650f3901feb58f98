"""Who may call what: clients need a client token on every SchedulerService method, workers the
cluster token on the gateway, and the scheduler the internal token on the predictor and tool
runner. Every method is taken from the service descriptors, so a new RPC is covered unasked."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc import aio

from lamps.client import Client
from lamps.v1 import predictor_pb2, tool_runner_pb2
from lamps.v1 import scheduler_pb2 as pb
from tests.security.calls import Metadata, bearer, methods, status_of
from tests.security.conftest import ALICE_TOKEN
from tests.support.processes import ServiceProcess, StartService
from tests.support.system import CLIENT_TOKEN, CLUSTER_TOKEN, LocalSystem

SCHEDULER = pb.DESCRIPTOR.services_by_name["SchedulerService"]
GATEWAY = pb.DESCRIPTOR.services_by_name["WorkerGatewayService"]
INTERNAL_SERVICES = {
    "predictor": predictor_pb2.DESCRIPTOR.services_by_name["PredictorService"],
    "tool-runner": tool_runner_pb2.DESCRIPTOR.services_by_name["ToolRunnerService"],
}
INTERNAL_TOKEN = "internal-secret"
REFUSED_CREDENTIALS: dict[str, Metadata] = {
    "no token": (),
    "a wrong token": bearer("not-a-token"),
    "the cluster token": bearer(CLUSTER_TOKEN),
    "a malformed header": (("authorization", CLIENT_TOKEN),),
}
REGISTRATION_WAIT_S = 30.0


@pytest.mark.parametrize("method", methods(SCHEDULER), ids=lambda m: m.name)
@pytest.mark.parametrize("credentials", REFUSED_CREDENTIALS, ids=str)
async def test_every_scheduler_method_refuses_callers_without_a_client_token(
    system: LocalSystem, method: MethodDescriptor, credentials: str
) -> None:
    async with aio.insecure_channel(system.target) as channel:
        code, details = await status_of(channel, method, REFUSED_CREDENTIALS[credentials])
    assert code is grpc.StatusCode.UNAUTHENTICATED, details
    assert "bearer token" in details


@pytest.mark.parametrize("token", [CLIENT_TOKEN, ALICE_TOKEN], ids=["shared", "tenant"])
async def test_client_tokens_do_not_open_the_worker_gateway(
    system: LocalSystem, token: str
) -> None:
    (connect,) = methods(GATEWAY)
    async with aio.insecure_channel(system.target) as channel:
        code, details = await status_of(channel, connect, bearer(token))
    assert code is grpc.StatusCode.UNAUTHENTICATED, details


@pytest.mark.parametrize(
    ("token", "why"),
    [(None, "missing bearer token"), ("stolen-guess", "invalid bearer token")],
    ids=["without a token", "with a wrong token"],
)
def test_a_worker_without_the_cluster_token_cannot_register_and_says_why(
    system: LocalSystem, token: str | None, why: str
) -> None:
    worker_id = f"intruder-{'none' if token is None else 'wrong'}"
    worker = system.start_worker(worker_id, cluster_token=token)
    try:
        record = _refusal_logged(worker)
        assert why in record["msg"]
        assert "--cluster-token" in record["msg"]
        with Client(system.target, token=CLIENT_TOKEN, timeout_s=10) as client:
            assert worker_id not in {w.worker_id for w in client.cluster_status().workers}
    finally:
        assert worker.terminate() == 0


def _refusal_logged(worker: ServiceProcess) -> dict[str, str]:
    """The worker's log record saying the scheduler refused its credentials (it retries with
    backoff; the first refusal comes within a second of start-up)."""
    deadline = time.monotonic() + REGISTRATION_WAIT_S
    while time.monotonic() < deadline:
        for record in worker.records():
            if "refused this worker's credentials" in str(record.get("msg", "")):
                return record
        time.sleep(0.05)
    raise AssertionError("the worker never logged the refusal:\n" + worker.log_path.read_text())


@pytest.mark.parametrize("component", INTERNAL_SERVICES)
async def test_internal_services_refuse_calls_without_the_internal_token_on_every_method(
    start_service: StartService, component: str
) -> None:
    service = start_service([component], env={"LAMPS_AUTH_TOKENS": INTERNAL_TOKEN})
    descriptor = INTERNAL_SERVICES[component]
    async with aio.insecure_channel(service.target) as channel:
        for method in methods(descriptor):
            for credentials in ((), bearer(CLIENT_TOKEN), bearer(CLUSTER_TOKEN)):
                code, details = await status_of(channel, method, credentials)
                assert code is grpc.StatusCode.UNAUTHENTICATED, (method.name, details)
            # The internal token gets past authentication (to whatever the empty request earns).
            code, details = await status_of(channel, method, bearer(INTERNAL_TOKEN))
            assert code is not grpc.StatusCode.UNAUTHENTICATED, (method.name, details)
