"""A worker with the cluster token that is admitted real requests and answers with fuzzed updates
about them (out-of-range finish reasons, huge token deltas and tool calls, bogus refusals, KV
reports that make no sense). It may ruin the requests it holds, but the scheduler must stay up,
every record must stay readable by the SDK, and the real worker must carry on as before."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import grpc
import pytest
from grpc import aio

from lamps.client import Client, RequestState
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb
from tests.fuzz.conftest import FuzzSystem, real_worker, wait_until_idle
from tests.support.fuzz import HOSTILE, SCHEDULER, is_serving, open_channel, settle
from tests.support.fuzz_wire import RandomChooser, length_delimited, message
from tests.support.system import CLIENT_TOKEN, CLUSTER_TOKEN

REQUESTS = 6
CONNECT = "/lamps.v1.WorkerGatewayService/Connect"
UPDATE = pb.RequestUpdate.DESCRIPTOR
REPORT = pb.Report.DESCRIPTOR


def hostile_register() -> bytes:
    """A valid Register for the model clients ask for, small enough that best fit picks it."""
    register = pb.Register(worker_id="hostile", model="sim", engine="sim", max_running=REQUESTS)
    register.kv.block_size, register.kv.total_blocks, register.kv.free_blocks = 16, 200, 200
    register.strategies.extend([cpb.STRATEGY_PRESERVE, cpb.STRATEGY_DISCARD, cpb.STRATEGY_SWAP])
    return pb.ConnectRequest(register=register).SerializeToString()


def fuzzed_report(chooser: RandomChooser, request_id: str) -> bytes:
    """A Report of fuzzed updates, each about `request_id` (the last occurrence of a field wins,
    so the id appended after the fuzzed bytes is the one the scheduler reads)."""
    updates = b"".join(
        length_delimited(
            REPORT.fields_by_name["updates"].number,
            message(UPDATE, chooser, HOSTILE) + length_delimited(1, request_id.encode()),
        )
        for _ in range(chooser.integer(1, 4))
    )
    kv = message(REPORT.fields_by_name["kv"].message_type, chooser, HOSTILE)  # type: ignore[arg-type]
    report = updates + length_delimited(REPORT.fields_by_name["kv"].number, kv)
    return length_delimited(pb.ConnectRequest.DESCRIPTOR.fields_by_name["report"].number, report)


async def play_hostile_worker(
    target: str, registered: asyncio.Event, admitted: list[str], seed: int
) -> None:
    """Register, then answer every Admit with fuzzed reports until REQUESTS were admitted."""
    chooser = RandomChooser(random.Random(seed))
    metadata = (("authorization", f"Bearer {CLUSTER_TOKEN}"),)
    async with aio.insecure_channel(target) as channel:
        connect = channel.stream_stream(CONNECT, None, None)
        call = connect(metadata=metadata, timeout=60)  # type: ignore[call-arg]
        await call.write(hostile_register())
        while len(admitted) < REQUESTS:
            raw = await call.read()
            if not isinstance(raw, bytes):  # the end of the stream
                break
            response = pb.ConnectResponse.FromString(raw)
            registered.set()
            if response.HasField("admit"):
                admitted.append(response.admit.request_id)
                try:
                    for _ in range(3):
                        await call.write(fuzzed_report(chooser, response.admit.request_id))
                except (aio.AioRpcError, aio.UsageError, grpc.RpcError):
                    break  # the scheduler ended the stream (a report it could not decode)
        call.cancel()


@pytest.fixture
def submitted(fuzz_system: FuzzSystem) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    with open_channel(fuzz_system.system.target) as channel:
        assert not settle(channel, fuzz_system.target(SCHEDULER.full_name), ids)


@pytest.mark.parametrize("seed", range(1, 9))
async def test_a_hostile_worker_harms_only_the_requests_it_holds(
    fuzz_system: FuzzSystem, submitted: list[str], seed: int
) -> None:
    target = fuzz_system.system.target
    admitted: list[str] = []
    registered = asyncio.Event()
    scheduler = fuzz_system.process_of(SCHEDULER.full_name)
    logged = len(scheduler.records())
    worker = asyncio.create_task(play_hostile_worker(target, registered, admitted, seed))
    await asyncio.wait_for(registered.wait(), 30)
    with Client(target, token=CLIENT_TOKEN, timeout_s=30) as client:
        for _ in range(REQUESTS):
            submitted.append(client.submit("What is 2+3?", max_tokens=8).request_id)
        await asyncio.wait_for(worker, 60)
        assert admitted, "best fit never chose the hostile worker"
        with open_channel(target) as channel:
            assert not settle(channel, fuzz_system.target(SCHEDULER.full_name), submitted)
            assert is_serving(channel, SCHEDULER.full_name)
        for request_id in submitted:  # every record, however mangled, reads through the SDK
            client.get_request(request_id)
        status = await asyncio.to_thread(wait_until_idle, fuzz_system)
        assert real_worker(status).kv.free_blocks == fuzz_system.baseline_free_blocks
        result = client.complete("What is 2+3?", max_tokens=8, model="sim")
    assert result.state is RequestState.FINISHED, result.error_message
    # The stream's end is seen by the scheduler (the client may only see its own write fail):
    # nothing it logged was an error (an exception applying a report, an UNKNOWN status).
    errors = [r for r in scheduler.records()[logged:] if r["level"] == "ERROR"]
    assert errors == []
    assert fuzz_system.system.scheduler is not None
    assert fuzz_system.system.scheduler.proc.poll() is None
