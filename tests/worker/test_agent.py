"""The worker agent against the protocol harness (tests/worker/gateway.py): registration,
heartbeats, tool calls, refusals, reconnects and drains, with a real sim engine."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from lamps.model.cost import get_profile
from lamps.v1 import common_pb2
from lamps.v1 import scheduler_pb2 as pb
from lamps.worker.agent import Agent
from lamps.worker.config import WorkerConfig
from lamps.worker.engines.sim import SimEngine
from tests.support.certs import TestCA
from tests.worker.gateway import CLUSTER_TOKEN, LoopbackGateway, ServerTls, admit, eventually

TOOL = "emulated.math"
LONG = 1_000_000  # tokens no test waits for: such a request ends only when told to

MakeAgent = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def gateway() -> AsyncIterator[LoopbackGateway]:
    gateway = LoopbackGateway()
    await gateway.start()
    yield gateway
    await gateway.stop()


@pytest.fixture
async def make_agent(
    gateway: LoopbackGateway, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[MakeAgent]:
    """Start an agent on a fresh sim engine against the harness; stopped (drained) at teardown,
    which must not have lost track of any request."""
    caplog.set_level(logging.WARNING, logger="lamps.worker.agent")
    async with contextlib.AsyncExitStack() as stack:

        async def make(swap: bool = True, scale: float = 50.0, **overrides: object) -> Agent:
            cost = get_profile("gptj-6b-a100").with_kv_tokens(200_000)
            if not swap:
                cost = dataclasses.replace(cost, cpu_swap_bytes=0)
            settings: dict[str, object] = {
                "scheduler_address": gateway.target,
                "cluster_token": CLUSTER_TOKEN,
                "worker_id": "worker-under-test",
                "reconnect_max_seconds": 0.2,
                "drain_seconds": 0.0,
                **overrides,
            }
            agent = Agent(SimEngine(cost, time_scale=scale), WorkerConfig(**settings))  # type: ignore[arg-type]
            await stack.enter_async_context(agent.running())
            return agent

        yield make
    assert not [r for r in caplog.records if "without saying how they ended" in r.getMessage()]


async def test_it_registers_with_what_its_engine_offers(
    gateway: LoopbackGateway, make_agent: MakeAgent
) -> None:
    agent = await make_agent()
    connection = await gateway.connection()
    await agent.registered.wait()
    register = connection.register
    assert (register.worker_id, register.model, register.engine) == (
        "worker-under-test",
        "sim",
        "sim",
    )
    assert list(register.strategies) == [
        common_pb2.STRATEGY_DISCARD,
        common_pb2.STRATEGY_PRESERVE,
        common_pb2.STRATEGY_SWAP,
    ]
    assert register.max_running == 256
    assert register.kv.total_blocks == register.kv.free_blocks == 200_000 // 16
    assert register.kv.cpu_total_blocks > 0
    assert register.profile.name == "gptj-6b-a100"
    assert register.profile.swap_bytes_per_second > 0
    assert list(register.held_request_ids) == []


async def test_without_swap_space_it_does_not_offer_swap(
    gateway: LoopbackGateway, make_agent: MakeAgent
) -> None:
    await make_agent(swap=False)
    register = (await gateway.connection()).register
    assert common_pb2.STRATEGY_SWAP not in register.strategies
    assert register.kv.cpu_total_blocks == 0
    assert register.profile.swap_bytes_per_second == 0


async def test_heartbeats_carry_kv_and_batch_the_token_deltas(
    gateway: LoopbackGateway, make_agent: MakeAgent
) -> None:
    await make_agent(report_interval_seconds=0.05)
    gateway.report_interval_s = 0.2
    connection = await gateway.connection()
    await connection.send(admit=admit("r1", [(400, "")]))
    await gateway.wait(lambda: gateway.ended("r1"))
    (completed,) = gateway.distinct("r1", "completed")
    assert completed.completed.completion_tokens == 400
    assert completed.completed.reason == common_pb2.FINISH_REASON_STOP
    assert len(gateway.tokens("r1")) == 400
    deltas = gateway.updates("r1", "tokens")
    assert len(deltas) < 400  # batched: many tokens per delta
    assert max(len(d.tokens.token_ids) for d in deltas) > 1
    assert all(d.tokens.text for d in deltas)
    assert gateway.updates("r1")[0].WhichOneof("update") == "started"
    # Heartbeats go on with nothing to say, each with the KV occupancy.
    quiet = len(connection.reports)
    await gateway.wait(lambda: len(connection.reports) >= quiet + 2)
    report = connection.reports[-1]
    assert not report.updates
    assert report.kv.total_blocks == report.kv.free_blocks > 0
    assert not report.draining


async def test_a_tool_call_is_reported_and_resume_continues_the_request(
    gateway: LoopbackGateway, make_agent: MakeAgent
) -> None:
    await make_agent()
    connection = await gateway.connection()
    await connection.send(admit=admit("r1", [(5, TOOL), (4, "")]))
    await gateway.wait(lambda: bool(gateway.updates("r1", "intercepted")))
    (intercepted,) = gateway.updates("r1", "intercepted")
    assert intercepted.intercepted.call.name == TOOL
    assert intercepted.intercepted.strategy == common_pb2.STRATEGY_PRESERVE
    assert len(gateway.tokens("r1")) == 5
    await connection.send(resume=pb.Resume(request_id="r1", append_tokens=3))
    await gateway.wait(lambda: gateway.ended("r1"))
    assert len(gateway.tokens("r1")) == 9
    assert gateway.distinct("r1", "completed")


async def test_bad_instructions_are_refused_without_disturbing_the_others(
    gateway: LoopbackGateway, make_agent: MakeAgent
) -> None:
    agent = await make_agent(swap=False, scale=5.0)
    connection = await gateway.connection()
    await connection.send(admit=admit("busy", [(300, "")]))
    await gateway.wait(lambda: bool(gateway.updates("busy", "tokens")))
    await connection.send(resume=pb.Resume(request_id="ghost", append_text="x"))
    await connection.send(abort=pb.Abort(request_id="ghost"))
    await connection.send(admit=admit("busy", [(2, "")]))
    await connection.send(admit=admit("swapper", [(2, "")], strategy=common_pb2.STRATEGY_SWAP))
    await connection.send(pause=pb.Pause(request_id="busy"))  # no strategy
    await connection.send(resume=pb.Resume(request_id="busy", append_text="not now"))
    await connection.send(admit=pb.Admit(prompt="no id"))
    await connection.send(admit=admit("odd", [(2, "")], strategy=7))  # type: ignore[arg-type]
    expected = {
        "ghost": [("resume", grpc.StatusCode.NOT_FOUND), ("abort", grpc.StatusCode.NOT_FOUND)],
        "swapper": [("admit", grpc.StatusCode.INVALID_ARGUMENT)],
        "busy": [
            ("admit", grpc.StatusCode.ALREADY_EXISTS),
            ("pause", grpc.StatusCode.INVALID_ARGUMENT),
            ("resume", grpc.StatusCode.FAILED_PRECONDITION),
        ],
        "": [("admit", grpc.StatusCode.INVALID_ARGUMENT)],
        "odd": [("admit", grpc.StatusCode.INVALID_ARGUMENT)],
    }

    def refused() -> dict[str, list[tuple[str, grpc.StatusCode]]]:
        codes = {c.value[0]: c for c in grpc.StatusCode}
        return {
            rid: [(r.instruction, codes[r.code]) for r in gateway.refusals(rid)] for rid in expected
        }

    await gateway.wait(lambda: all(refused()[rid] for rid in expected) and gateway.ended("busy"))
    assert refused() == expected
    assert all(r.message for rid in expected for r in gateway.refusals(rid))
    # The request they named ran on untouched.
    (completed,) = gateway.distinct("busy", "completed")
    assert completed.completed.completion_tokens == 300
    assert len(gateway.tokens("busy")) == 300
    assert agent.engine.held() == []


async def test_preempt_and_abort_from_the_scheduler(
    gateway: LoopbackGateway, make_agent: MakeAgent
) -> None:
    agent = await make_agent()
    connection = await gateway.connection()
    await connection.send(admit=admit("pre", [(LONG, "")]))
    await connection.send(admit=admit("gone", [(LONG, "")]))
    await gateway.wait(lambda: bool(gateway.updates("pre", "tokens")))
    await connection.send(preempt=pb.Preempt(request_id="pre"))
    await connection.send(abort=pb.Abort(request_id="gone"))
    await gateway.wait(lambda: gateway.ended("pre"))
    (released,) = gateway.distinct("pre", "released")
    assert released.released.reason == pb.RELEASE_REASON_PREEMPTED
    assert released.released.generated_tokens == len(gateway.tokens("pre"))
    await eventually(lambda: not agent.engine.held())
    assert not gateway.ended("gone")


async def test_after_the_scheduler_restarts_it_re_registers_with_what_it_holds(
    gateway: LoopbackGateway, make_agent: MakeAgent
) -> None:
    agent = await make_agent(scale=5.0)
    first = await gateway.connection()
    await first.send(admit=admit("running", [(LONG, "")]))
    await first.send(admit=admit("in-tool", [(6, TOOL), (4, "")]))
    await gateway.wait(
        lambda: bool(
            gateway.updates("in-tool", "intercepted") and gateway.updates("running", "tokens")
        )
    )
    # The scheduler goes away and comes back; the worker keeps generating into its journal.
    reconnects = REGISTRY.get_sample_value("lamps_worker_reconnects_total") or 0.0
    await gateway.stop()
    await gateway.start()
    second = await gateway.connection(1)
    assert sorted(second.register.held_request_ids) == ["in-tool", "running"]
    before = len(gateway.tokens("running"))
    await gateway.wait(lambda: len(gateway.tokens("running")) > before + 10)
    await second.send(resume=pb.Resume(request_id="in-tool", append_tokens=3))
    await second.send(preempt=pb.Preempt(request_id="running"))
    await gateway.wait(lambda: gateway.ended("in-tool") and gateway.ended("running"))

    # Nothing lost: every token from 0 on, and the ends agree with them.
    (released,) = gateway.distinct("running", "released")
    assert released.released.generated_tokens == len(gateway.tokens("running"))
    (completed,) = gateway.distinct("in-tool", "completed")
    assert completed.completed.completion_tokens == len(gateway.tokens("in-tool")) == 10
    # Nothing duplicated: one call, one start; re-sent copies are identical.
    assert len(gateway.distinct("in-tool", "intercepted")) == 1
    assert len(gateway.distinct("in-tool", "started")) == 1
    assert agent.engine.held() == []
    assert REGISTRY.get_sample_value("lamps_worker_reconnects_total") == reconnects + 1


async def test_an_end_reached_while_the_scheduler_was_away_longer_than_a_lease_is_still_sent(
    gateway: LoopbackGateway, make_agent: MakeAgent
) -> None:
    # A killed scheduler's successor takes over only after the leader lease, often more than a
    # worker lease after the kill: the Register claims a request that ended meanwhile, so its
    # end must follow, or the new leader waits on it forever.
    gateway.lease_s = 0.3
    agent = await make_agent(scale=5.0)
    first = await gateway.connection()
    await first.send(admit=admit("ends-alone", [(200, "")]))
    await gateway.wait(lambda: bool(gateway.updates("ends-alone", "tokens")))
    await gateway.stop()
    await eventually(lambda: not agent.engine.held())
    await asyncio.sleep(0.5)  # the time that passing is what this test is about: > a lease
    await gateway.start()
    second = await gateway.connection(1)
    assert list(second.register.held_request_ids) == ["ends-alone"]
    await gateway.wait(
        lambda: any(u.HasField("completed") for r in second.reports for u in r.updates)
    )
    (completed,) = gateway.distinct("ends-alone", "completed")
    assert completed.completed.completion_tokens == len(gateway.tokens("ends-alone")) == 200


async def test_registered_drop_ids_make_it_let_go(
    gateway: LoopbackGateway, make_agent: MakeAgent
) -> None:
    agent = await make_agent(scale=5.0)
    first = await gateway.connection()
    await first.send(admit=admit("kept", [(LONG, "")]))
    await first.send(admit=admit("dropped", [(LONG, "")]))
    await gateway.wait(lambda: bool(gateway.updates("dropped", "tokens")))
    gateway.drop_at_next_register = ["dropped"]
    await gateway.stop()
    await gateway.start()
    second = await gateway.connection(1)
    assert sorted(second.register.held_request_ids) == ["dropped", "kept"]
    await gateway.wait(lambda: agent.engine.held() == ["kept"])
    await gateway.wait(lambda: len(second.reports) >= 2)
    assert not any(u.request_id == "dropped" for r in second.reports for u in r.updates)
    await second.send(abort=pb.Abort(request_id="kept"))
    await eventually(lambda: agent.engine.held() == [])


async def test_the_scheduler_s_drain_hands_back_what_does_not_finish(
    gateway: LoopbackGateway, make_agent: MakeAgent
) -> None:
    agent = await make_agent()
    connection = await gateway.connection()
    await connection.send(admit=admit("long", [(LONG, "")]))
    await gateway.wait(lambda: bool(gateway.updates("long", "tokens")))
    await connection.send(drain=pb.Drain(grace_seconds=0.0))
    await gateway.wait(lambda: gateway.ended("long"))
    (released,) = gateway.distinct("long", "released")
    assert released.released.reason == pb.RELEASE_REASON_DRAINED
    assert released.released.generated_tokens == len(gateway.tokens("long"))
    assert connection.reports[-1].draining
    await connection.send(admit=admit("late", [(3, "")]))
    await gateway.wait(lambda: bool(gateway.refusals("late")))
    (refusal,) = gateway.refusals("late")
    assert refusal.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "draining" in refusal.message
    assert agent.engine.held() == []


async def test_a_wrong_cluster_token_is_logged_and_retried(
    gateway: LoopbackGateway, make_agent: MakeAgent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="lamps.worker.agent")
    agent = await make_agent(cluster_token="wrong")

    def complaints() -> int:
        return sum("refused this worker's credentials" in r.getMessage() for r in caplog.records)

    await eventually(lambda: complaints() >= 2)
    assert not agent.registered.is_set()
    assert gateway.connections == []


async def test_it_reaches_a_scheduler_over_mutual_tls(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    server, client = ca.issue("server", server=True), ca.issue("client", server=False)
    gateway = LoopbackGateway(ServerTls(server.cert, server.key, client_ca_file=ca.pair.cert))
    await gateway.start()
    config = WorkerConfig(
        scheduler_address=gateway.target,
        cluster_token=CLUSTER_TOKEN,
        scheduler_ca_file=ca.pair.cert,
        scheduler_cert_file=client.cert,
        scheduler_key_file=client.key,
        drain_seconds=0.0,
    )
    agent = Agent(SimEngine(get_profile("gptj-6b-a100"), time_scale=50.0), config)
    try:
        async with agent.running():
            connection = await gateway.connection()
            await connection.send(admit=admit("tls", [(5, "")]))
            await gateway.wait(lambda: gateway.ended("tls"))
            assert len(gateway.tokens("tls")) == 5
    finally:
        await gateway.stop()


async def test_a_discarded_request_continues_on_another_worker_from_its_exact_context(
    gateway: LoopbackGateway, make_agent: MakeAgent
) -> None:
    await make_agent(worker_id="w1")
    await make_agent(worker_id="w2")
    await gateway.wait(lambda: len(gateway.connections) == 2)
    by_id = {c.register.worker_id: c for c in gateway.connections}
    first = admit("moved", [(5, TOOL), (4, "")], strategy=common_pb2.STRATEGY_DISCARD)
    await by_id["w1"].send(admit=first)
    await gateway.wait(lambda: gateway.ended("moved"))
    (released,) = gateway.distinct("moved", "released")
    assert released.released.reason == pb.RELEASE_REASON_DISCARDED
    again = pb.Admit(
        request_id="moved",
        context_token_ids=released.released.context_token_ids,
        append_tokens=3,
        max_new_tokens=95,
        generated_tokens=released.released.generated_tokens,
        replay=common_pb2.Replay(segments=[common_pb2.ReplaySegment(output_tokens=4)]),
    )
    await by_id["w2"].send(admit=again)
    await gateway.wait(lambda: bool(gateway.distinct("moved", "completed")))
    (completed,) = gateway.distinct("moved", "completed")
    assert completed.completed.completion_tokens == len(gateway.tokens("moved")) == 9
    (restarted,) = [u for u in gateway.updates("moved", "started") if u.started.recomputed_tokens]
    assert restarted.started.recomputed_tokens == len(released.released.context_token_ids)


async def test_swap_moves_the_kv_to_cpu_memory_while_the_tool_runs(
    gateway: LoopbackGateway, make_agent: MakeAgent
) -> None:
    await make_agent()
    connection = await gateway.connection()
    swapped = admit("swapped", [(5, TOOL), (4, "")], strategy=common_pb2.STRATEGY_SWAP)
    swapped.prompt = " ".join(f"w{i}" for i in range(2000))
    await connection.send(admit=swapped)
    await gateway.wait(lambda: bool(gateway.updates("swapped", "intercepted")))
    (intercepted,) = gateway.updates("swapped", "intercepted")
    assert intercepted.intercepted.strategy == common_pb2.STRATEGY_SWAP
    await gateway.wait(
        lambda: any(r.kv.cpu_free_blocks < r.kv.cpu_total_blocks for r in connection.reports)
    )
    await connection.send(resume=pb.Resume(request_id="swapped", append_tokens=3))
    await gateway.wait(lambda: gateway.ended("swapped"))
    assert len(gateway.tokens("swapped")) == 9


class _FaultyResume(SimEngine):
    """A sim engine whose resume has a bug: the agent must contain it."""

    async def resume(self, request_id: str, append_text: str = "", append_tokens: int = 0) -> None:
        raise RuntimeError("injected fault")


async def test_an_engine_bug_on_one_instruction_is_refused_as_internal_and_others_run_on(
    gateway: LoopbackGateway,
) -> None:
    config = WorkerConfig(
        scheduler_address=gateway.target, cluster_token=CLUSTER_TOKEN, drain_seconds=0.0
    )
    agent = Agent(_FaultyResume(get_profile("gptj-6b-a100"), time_scale=50.0), config)
    async with agent.running():
        connection = await gateway.connection()
        await connection.send(admit=admit("paused", [(3, TOOL), (3, "")]))
        await connection.send(admit=admit("other", [(20, "")]))
        await gateway.wait(lambda: bool(gateway.updates("paused", "intercepted")))
        await connection.send(resume=pb.Resume(request_id="paused", append_tokens=3))
        await gateway.wait(lambda: bool(gateway.refusals("paused")) and gateway.ended("other"))
        (refusal,) = gateway.refusals("paused")
        assert refusal.code == grpc.StatusCode.INTERNAL.value[0]
        assert "injected fault" in refusal.message
        assert len(gateway.tokens("other")) == 20
        assert len(gateway.connections) == 1  # the stream survived
