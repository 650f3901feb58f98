"""The admission limit: with --max-waiting-requests 3 and no worker, a fourth submission is shed
with RESOURCE_EXHAUSTED and a retry hint, stores nothing, and the accepted ones all finish once a
worker connects, after which submissions are accepted again."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from lamps.client import (
    Client,
    NotFound,
    ReplaySegment,
    RequestState,
    ResourceExhausted,
    Result,
    Unavailable,
)
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.processes import REPO_ROOT, lamps_command
from tests.support.redis import RedisProcess
from tests.support.system import CLIENT_TOKEN, LocalSystem, running_system, wait_for_workers

LIMIT = 3
SCRIPT = [ReplaySegment(output_tokens=20)]
FULL = f"{LIMIT} requests waiting for a worker (limit {LIMIT}); retry in"


@pytest.fixture
def system(redis_process: RedisProcess, tmp_path: Path) -> Iterator[LocalSystem]:
    """A scheduler with the limit and no worker yet."""
    # A short lease: the restarted scheduler leads soon after the killed one's lease runs out.
    args = ("--max-waiting-requests", str(LIMIT), "--leader-lease-seconds", "1")
    with running_system(tmp_path, redis_process.url, workers=0, scheduler_args=args) as running:
        yield running


def stored(system: LocalSystem, kind: str) -> int:
    """How many keys of a kind (req, idem) the scheduler keeps in Redis."""
    client = redis.Redis.from_url(system.redis_url)
    try:
        return sum(1 for _ in client.scan_iter(match=f"{system.prefix}:{kind}:*"))
    finally:
        client.close()


def shed_total(system: LocalSystem) -> float:
    assert system.scheduler is not None
    url = f"http://127.0.0.1:{system.scheduler.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    (line,) = [x for x in text.splitlines() if x.startswith("lamps_scheduler_requests_shed_total")]
    return float(line.split()[-1])


def wait_until_leading(client: Client) -> None:
    """After a restart the new process stands by until the killed one's lease runs out."""
    for _ in range(400):
        try:  # only the leader answers a Cancel (here NOT_FOUND); a standby says UNAVAILABLE
            client.cancel("0" * 32)
        except NotFound:
            return
        except Unavailable:
            time.sleep(0.05)
    raise AssertionError("the restarted scheduler never took the lead")


def shed_trailers(target: str, request_id: str) -> dict[str, str]:
    """The trailing metadata of a Submit the full scheduler refuses, through the raw stub."""
    metadata = (("authorization", f"Bearer {CLIENT_TOKEN}"), ("x-request-id", request_id))
    request = pb.SubmitRequest(request=pb.GenerateRequest(prompt="raw"))
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Submit(request, metadata=metadata)
    error: grpc.Call = refused.value  # type: ignore[assignment]
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    return {key: str(value) for key, value in error.trailing_metadata() or ()}


def test_a_full_scheduler_sheds_with_a_retry_hint_and_recovers(system: LocalSystem) -> None:
    with Client(system.target, token=CLIENT_TOKEN, timeout_s=30) as client:
        accepted = [
            client.submit(f"waits {i}", idempotency_key=f"key-{i}", replay=SCRIPT).request_id
            for i in range(LIMIT)
        ]
        # A restart rebuilds the count from Redis: the limit still holds.
        system.restart_scheduler()
        wait_until_leading(client)
        with pytest.raises(ResourceExhausted) as submitted:
            client.submit("one too many", idempotency_key="key-new", replay=SCRIPT)
        assert FULL in submitted.value.message
        assert submitted.value.retry_after_s is not None
        assert submitted.value.retry_after_s > 0
        with pytest.raises(ResourceExhausted) as generated:
            list(client.generate("one too many", replay=SCRIPT))
        assert generated.value.retry_after_s is not None
        # On the wire: the hint sits beside the request id every call echoes.
        trailers = shed_trailers(system.target, request_id="shed-raw")
        assert trailers["x-request-id"] == "shed-raw"
        assert int(trailers["retry-after"]) > 0
        # A retry of an accepted submission is answered, full or not.
        again = client.submit("waits 1", idempotency_key="key-1", replay=SCRIPT)
        assert (again.request_id, again.created) == (accepted[1], False)
        assert stored(system, "req") == LIMIT
        assert stored(system, "idem") == LIMIT

        cli = subprocess.run(
            lamps_command("generate", "hi", "--address", system.target, "--token", CLIENT_TOKEN),
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
            check=False,
        )
        assert cli.returncode == 1
        assert "RESOURCE_EXHAUSTED" in cli.stderr
        assert "retry in" in cli.stderr
        # The SDK submit, its generate, the raw submit and the CLI: four refusals counted.
        assert shed_total(system) == 4

        system.start_worker("w1", "--time-scale", "20")
        wait_for_workers(system, 1)
        for request_id in accepted:
            assert Result.from_events(client.watch(request_id)).state is RequestState.FINISHED
        later = client.complete("room again", replay=SCRIPT)
        assert later.state is RequestState.FINISHED
