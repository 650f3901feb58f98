"""The chart's wiring starts working services: every rendered container's command, arguments and
environment run as local processes, with only what a pod has and a laptop has not rewritten:
Service host names and ports to loopback ones, mounted ConfigMaps to files, Secrets resolved, the
pod's name where the downward API gives it, and, for a `vllm` worker, the model: a hub id becomes
the tiny Llama the tests build (nothing is downloaded), with a KV cache a laptop can hold.
Then a request submitted with the rendered client token runs through scheduler, predictor,
tool runner and worker, and completes.
"""

from __future__ import annotations

import asyncio
import base64
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamps.scheduler.embedded import redis_server_binary
from lamps.v1 import (
    common_pb2,
    predictor_pb2,
    predictor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    tool_runner_pb2,
    tool_runner_pb2_grpc,
)
from tests.helm.chart import Manifest, component_of, render, workloads
from tests.support.processes import ServiceProcess, StartService, lamps_command

SERVICES = ("scheduler", "worker", "predictor", "tool-runner")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Cluster:
    """The rendered release, mapped onto this machine."""

    manifests: list[Manifest]
    root: Path
    # (Service host, Service port) -> local port, and each component's container ports likewise.
    endpoints: dict[tuple[str, int], int] = field(default_factory=dict)
    container_ports: dict[str, dict[int, int]] = field(default_factory=dict)

    def secret(self, name: str, key: str) -> str:
        for m in self.manifests:
            if m["kind"] == "Secret" and m["metadata"]["name"] == name:
                return base64.b64decode(m["data"][key]).decode()
        raise AssertionError(f"env refers to Secret {name}, which the chart does not render")

    def configmap(self, name: str) -> dict[str, str]:
        for m in self.manifests:
            if m["kind"] == "ConfigMap" and m["metadata"]["name"] == name:
                data: dict[str, str] = m["data"]
                return data
        raise AssertionError(f"a volume mounts ConfigMap {name}, which the chart does not render")

    def rewrite_hosts(self, text: str) -> str:
        for (host, port), local in self.endpoints.items():
            text = re.sub(
                rf"\b{re.escape(host)}(\.[a-z0-9.-]+)?:{port}\b", f"127.0.0.1:{local}", text
            )
        return text


def map_onto_loopback(manifests: list[Manifest], root: Path) -> Cluster:
    cluster = Cluster(manifests, root)
    for workload in workloads(manifests):
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        ports = {p["containerPort"]: free_port() for p in container["ports"]}
        cluster.container_ports[component_of(workload)] = ports
    for service in (m for m in manifests if m["kind"] == "Service"):
        ports = cluster.container_ports[component_of(service)]
        for port in service["spec"]["ports"]:
            cluster.endpoints[(service["metadata"]["name"], port["port"])] = ports[port["port"]]
    return cluster


def local_env(
    cluster: Cluster, component: str, container: dict[str, Any], model_dir: Path
) -> dict[str, str]:
    """The container's environment as the kubelet builds it: Secrets read, $(VAR) expanded."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" in var and "fieldRef" in var["valueFrom"]:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            value = f"{component}-0"  # the pod's name
        elif "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            value = cluster.secret(ref["name"], ref["key"])
        else:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), str(var["value"]))
        env[var["name"]] = cluster.rewrite_hosts(value)
    for name in ("LAMPS_PORT", "LAMPS_METRICS_PORT"):
        env[name] = str(cluster.container_ports[component][int(env[name])])
    # A pod listens on its own address; here, loopback.
    env["LAMPS_HOST"] = env["LAMPS_METRICS_HOST"] = "127.0.0.1"
    if env.get("LAMPS_ENGINE") == "vllm":
        # The weights a GPU pod would download or mount, and memory a laptop has.
        assert env["LAMPS_MODEL"]
        env.update(
            LAMPS_MODEL=str(model_dir),
            LAMPS_DTYPE="float32",
            LAMPS_MAX_MODEL_LEN="512",
            LAMPS_KV_CACHE_BYTES=str(4 << 20),
            LAMPS_BLOCK_SIZE="32",
        )
    return env


def local_args(cluster: Cluster, component: str, pod: dict[str, Any]) -> list[str]:
    """The container's arguments, with its ConfigMap mounts written under the test's directory."""
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    args = [cluster.rewrite_hosts(str(a)) for a in container.get("args", [])]
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" not in volume:
            continue
        directory = cluster.root / component / mount["mountPath"].strip("/")
        directory.mkdir(parents=True)
        for name, text in cluster.configmap(volume["configMap"]["name"]).items():
            (directory / name).write_text(text)
        args = [a.replace(mount["mountPath"], str(directory)) for a in args]
    return args


@pytest.fixture(params=[(), ("values-cpu.yaml",)], ids=["defaults", "values-cpu.yaml"])
def redis_from_chart(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Cluster, int]]:
    """The rendered release and its bundled Redis, started from the StatefulSet's own args."""
    cluster = map_onto_loopback(render(request.param), tmp_path)
    (statefulset,) = [w for w in workloads(cluster.manifests) if component_of(w) == "redis"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = local_env_for_redis(cluster, container)
    port = cluster.container_ports["redis"][6379]
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], str(a)) for a in container["args"]]
    args = [str(port) if a == "6379" else str(tmp_path) if a == "/data" else a for a in args]
    log = (tmp_path / "redis.log").open("wb")
    proc = subprocess.Popen(
        [str(redis_server_binary()), *args, "--bind", "127.0.0.1"], stdout=log, stderr=log
    )
    try:
        wait_for_redis(port, env["REDIS_PASSWORD"])
        yield cluster, port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def local_env_for_redis(cluster: Cluster, container: dict[str, Any]) -> dict[str, str]:
    env = {}
    for var in container["env"]:
        ref = var["valueFrom"]["secretKeyRef"]
        env[var["name"]] = cluster.secret(ref["name"], ref["key"])
    return env


def wait_for_redis(port: int, password: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with redis.Redis(port=port, password=password, socket_timeout=1) as client:
                client.ping()
                return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_rendered(
    cluster: Cluster, start_process: StartService, model_dir: Path
) -> dict[str, tuple[ServiceProcess, dict[str, str]]]:
    started = {}
    for workload in workloads(cluster.manifests):
        component = component_of(workload)
        if component == "redis":
            continue
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == ["lamps", component, "serve"]
        env = local_env(cluster, component, container, model_dir)
        argv = lamps_command(component, "serve", *local_args(cluster, component, pod))
        started[component] = (start_process(argv, env, wait=False), env)
    for service, _ in started.values():
        service.wait_ready(timeout=180)
    return started


async def serving(target: str) -> bool:
    async with aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def eventually_serving(target: str) -> bool:
    deadline = time.monotonic() + 60
    while not await serving(target):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def expect_code(call: Any, code: grpc.StatusCode) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()


async def test_rendered_containers_start_serve_and_take_the_rendered_tokens(
    redis_from_chart: tuple[Cluster, int], start_process: StartService, tiny_llama_dir: Path
) -> None:
    cluster, redis_port = redis_from_chart
    started = start_rendered(cluster, start_process, tiny_llama_dir)
    assert sorted(started) == sorted(SERVICES)
    for service, _ in started.values():
        # A worker is ready once registered with the scheduler through the rendered
        # LAMPS_SCHEDULER_ADDRESS and LAMPS_CLUSTER_TOKEN.
        assert await eventually_serving(service.target)

    predictor, predictor_env = started["predictor"]
    internal = predictor_env["LAMPS_AUTH_TOKENS"]
    assert predictor_env["LAMPS_REDIS_URL"].startswith("redis://:")
    assert f"@127.0.0.1:{redis_port}/0" in predictor_env["LAMPS_REDIS_URL"]
    async with aio.insecure_channel(predictor.target) as channel:
        stub = predictor_pb2_grpc.PredictorServiceStub(channel)
        request = predictor_pb2.PredictRequest(
            inputs=[predictor_pb2.PredictionInput(prompt="p", tools=["math"])]
        )
        response = await stub.Predict(request, metadata=bearer(internal), timeout=30)
        assert response.predictions[0].tool == "math"
        await expect_code(stub.Predict(request, timeout=10), grpc.StatusCode.UNAUTHENTICATED)

    tool_runner, tool_env = started["tool-runner"]
    assert tool_env["LAMPS_AUTH_TOKENS"] == internal
    async with aio.insecure_channel(tool_runner.target) as channel:
        tools = tool_runner_pb2_grpc.ToolRunnerServiceStub(channel)
        listed = await tools.ListTools(
            tool_runner_pb2.ListToolsRequest(), metadata=bearer(internal), timeout=10
        )
        (calculator,) = [t for t in listed.tools if t.name == "calculator"]
        assert calculator.max_concurrency == 128  # from the rendered tools file

    scheduler, scheduler_env = started["scheduler"]
    client_token = scheduler_env["LAMPS_AUTH_TOKENS"]
    cluster_token = scheduler_env["LAMPS_CLUSTER_TOKENS"]
    assert len({client_token, cluster_token, internal}) == 3
    async with aio.insecure_channel(scheduler.target) as channel:
        front = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        submit = scheduler_pb2.SubmitRequest()
        # Past authentication: the scheduler itself refuses the empty request.
        await expect_code(
            front.Submit(submit, metadata=bearer(client_token), timeout=10),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        await expect_code(
            front.Submit(submit, metadata=bearer(internal), timeout=10),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        # A request with two tool calls runs through the whole rendered release.
        _, worker_env = started["worker"]
        assert worker_env["LAMPS_CLUSTER_TOKEN"] == cluster_token
        status = await front.ClusterStatus(
            scheduler_pb2.ClusterStatusRequest(), metadata=bearer(client_token), timeout=10
        )
        assert [w.engine for w in status.workers] == [worker_env["LAMPS_ENGINE"]]
        assert status.policy == scheduler_env["LAMPS_POLICY"]
        script = common_pb2.Replay(
            segments=[
                common_pb2.ReplaySegment(
                    output_tokens=6,
                    tool="emulated.math",
                    tool_duration_seconds=0.2,
                    tool_output_tokens=3,
                ),
                common_pb2.ReplaySegment(output_tokens=4, tool="calculator", tool_output_tokens=2),
                common_pb2.ReplaySegment(output_tokens=5),
            ]
        )
        generate = front.Generate(
            scheduler_pb2.GenerateRequest(prompt="What is 6 times 7?", replay=script),
            metadata=bearer(client_token),
            timeout=120,
        )
        events = [response.event async for response in generate]
        (finished,) = [e.finished for e in events if e.HasField("finished")]
        assert finished.state == common_pb2.REQUEST_STATE_FINISHED, finished
        assert finished.usage.completion_tokens == 15
        assert finished.usage.tool_calls == 2
        results = [e.tool_call_finished.result for e in events if e.HasField("tool_call_finished")]
        # The emulated tool answered; the calculator refused the replay's arguments, readably.
        assert not results[0].HasField("error")
        assert results[1].error.code == common_pb2.TOOL_ERROR_CODE_INVALID_ARGUMENTS

    # All at once: each drains for its rendered drain delay, then exits 0.
    for service, _ in started.values():
        service.proc.send_signal(signal.SIGTERM)
    for service, _ in started.values():
        assert service.proc.wait(60) == 0, service.log_path.read_text()
