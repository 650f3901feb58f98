"""`lamps up`: the whole system on this machine, each part a real process on loopback.

    lamps up --workers 2 --time-scale 10
    lamps up --engine vllm --model ./smollm2 --dtype float32

Starts an embedded Redis (unless --redis-url), the predictor and the tool runner, the scheduler,
then the workers; waits until each is healthy and the scheduler lists every worker READY; prints
where to connect; restarts a part that crashes; on Ctrl-C or SIGTERM stops workers first, then the
scheduler, the predictor and tool runner, and Redis last. A second Ctrl-C kills everything at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from lamps.cli import up_parts as parts
from lamps.cli.certs import LocalTls
from lamps.cli.supervisor import Child, PartError, Supervisor
from lamps.cli.up_config import UpConfig
from lamps.client import DEFAULT_ADDRESS
from lamps.common import config as cfg
from lamps.common.channel import open_channel
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc

ENDPOINTS_FILE = "endpoints.json"
POLL_S = 0.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cfg.add_arguments(parser, UpConfig)
    parser.set_defaults(up_parser=parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = cfg.load(UpConfig, args)
    except cfg.ConfigError as exc:
        args.up_parser.error(str(exc))
    return asyncio.run(_main(config))


def say(message: str) -> None:
    """A progress line on standard error."""
    print(f"lamps up: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunPaths:
    """Where one run keeps its files."""

    state_dir: Path
    run_dir: Path
    log_dir: Path

    @classmethod
    def create(cls, config: UpConfig) -> RunPaths:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = config.state_dir / stamp
        suffix = 1
        while True:  # two runs started in the same second each get their own directory
            try:
                run_dir.mkdir(parents=True)
                break
            except FileExistsError:
                suffix += 1
                run_dir = config.state_dir / f"{stamp}-{suffix}"
        log_dir = config.log_dir or run_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        return cls(config.state_dir, run_dir, log_dir)

    @property
    def endpoints(self) -> Path:
        return self.state_dir / ENDPOINTS_FILE


class LocalSystem:
    """One run of `lamps up`: brings the parts up, keeps them up, writes where they are."""

    def __init__(self, config: UpConfig, paths: RunPaths) -> None:
        self.config = config
        self.paths = paths
        self.keys = parts.Secrets(tls=LocalTls.create(config.tls_dir) if config.tls else None)
        self.ready = False
        self.supervisor = Supervisor(
            paths.log_dir, config.ready_timeout, say, on_change=self._write_endpoints
        )

    @property
    def schedulers(self) -> list[Child]:
        names = (parts.scheduler_name(i) for i in range(self.config.schedulers))
        return [self.supervisor.children[name] for name in names]

    @property
    def scheduler_address(self) -> str:
        """What clients and workers dial: the one scheduler, or all replicas (the leader's
        health says SERVING, and gRPC's channel follows it)."""
        return parts.scheduler_address([child.port for child in self.schedulers])

    async def up_and_watch(self) -> int:
        """Bring everything up, then keep it up; returns 1 (after saying why) when a part
        fails to start or crashes too often."""
        try:
            await self._bring_up()
            self.ready = True
            self._write_endpoints()
            print(self._banner(), flush=True)
            await self.supervisor.supervise()
        except PartError as exc:
            self._report(exc)
        return 1

    async def _bring_up(self) -> None:
        config, keys, start = self.config, self.keys, self.supervisor.start
        redis_url = config.redis_url
        if redis_url is None:
            redis_dir = self.paths.run_dir / "redis"
            redis_dir.mkdir(exist_ok=True)
            redis = await start(parts.redis_part(redis_dir))
            redis_url = f"redis://{parts.LOOPBACK}:{redis.port}/0"
        predictor, tool_runner = await self.supervisor.start_all(
            [parts.predictor_part(config, keys, redis_url), parts.tool_runner_part(config, keys)]
        )
        helpers = (_address(predictor), _address(tool_runner))
        # The first replica alone, so that it leads; the standbys then start side by side.
        leader = await start(parts.scheduler_part(config, keys, redis_url, helpers))
        await self.supervisor.start_all(
            [
                parts.scheduler_part(config, keys, redis_url, helpers, i)
                for i in range(1, config.schedulers)
            ]
        )
        address = self.scheduler_address
        await self.supervisor.start_all(
            [parts.worker_part(config, keys, i, address) for i in range(config.workers)]
        )
        await self._wait_for_workers(leader)

    async def _wait_for_workers(self, leader: Child) -> None:
        """Until the scheduler lists every worker READY (each said SERVING once registered)."""
        wanted = {parts.worker_id(i) for i in range(self.config.workers)}
        token = self.config.probe_token
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        deadline = time.monotonic() + self.config.ready_timeout
        ready: set[str] = set()
        last_error = ""
        service = pb.DESCRIPTOR.services_by_name["SchedulerService"].full_name
        tls = self.keys.client_tls
        async with open_channel(self.scheduler_address, tls=tls, health_service=service) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            while time.monotonic() < deadline:
                try:
                    status = await stub.ClusterStatus(
                        pb.ClusterStatusRequest(), metadata=metadata, timeout=2.0
                    )
                    ready = {
                        w.worker_id for w in status.workers if w.state == pb.WORKER_STATE_READY
                    }
                    if wanted <= ready:
                        return
                except grpc.RpcError as exc:
                    error = f"ClusterStatus: {exc.code().name}: {exc.details()}"
                    if error != last_error:  # once, not ten times a second
                        say(error)
                    last_error = error
                await asyncio.sleep(POLL_S)
        missing = ", ".join(sorted(wanted - ready))
        raise PartError(leader, f"does not list {missing} as READY")

    def _report(self, failure: PartError) -> None:
        child = failure.child
        say(f"{failure}; the last lines of {child.log_path}:")
        print(child.tail(), file=sys.stderr, flush=True)

    def _banner(self) -> str:
        config = self.config
        scheduler = self.schedulers[0]
        flags = "".join(f" {flag} {value}" for flag, value in self.client_flags().items())
        if config.token:
            flags += " --token $TOKEN"
        lines = [
            f"LAMPS is up at {self.scheduler_address}",
            f"  workers     {config.workers} x {config.engine} ({config.worker_model}), "
            f"profile {config.profile}, time scale {config.time_scale:g}x",
            f"  policy      {config.policy}",
            *self._replicas_line(),
            *self._tls_lines(),
            f"  metrics     http://{parts.LOOPBACK}:{scheduler.metrics_port}/metrics",
            f"  logs        {self.paths.log_dir}",
            f"  try         lamps generate 'What is 2+3?'{flags}",
            "Ctrl-C to stop.",
        ]
        return "\n".join(lines)

    def client_flags(self) -> dict[str, str]:
        """The `lamps generate/status/bench` flags this system needs beyond the defaults."""
        flags = {}
        if self.scheduler_address != DEFAULT_ADDRESS:  # where clients look unless told
            flags["--address"] = self.scheduler_address
        if self.keys.tls is not None:
            flags["--tls-ca-file"] = str(self.keys.tls.ca_file.resolve())
        return flags

    def client_environment(self) -> dict[str, str]:
        """The same as LAMPS_* variables, which the SDK's `Client.from_env()` reads too."""
        env = {"LAMPS_ADDRESS": self.scheduler_address}
        if self.keys.tls is not None:
            env["LAMPS_TLS_CA_FILE"] = str(self.keys.tls.ca_file.resolve())
        return env

    def _tls_lines(self) -> list[str]:
        if self.keys.tls is None:
            return []
        exports = " ".join(f"{name}={value}" for name, value in self.client_environment().items())
        return [
            f"  tls         every part serves TLS with a certificate of the CA "
            f"{self.keys.tls.ca_file.resolve()}",
            f"  clients     export {exports}",
        ]

    def _replicas_line(self) -> list[str]:
        if self.config.schedulers == 1:
            return []
        return [
            f"  schedulers  {self.config.schedulers} replicas, one leads (leader lease "
            f"{self.config.leader_lease_seconds:g} s)"
        ]

    def _write_endpoints(self) -> None:
        if not self.ready:
            return
        document = {
            "scheduler": self.scheduler_address,
            "pid": os.getpid(),
            "auth": bool(self.config.token),
            "tls": self.keys.tls is not None,
            # What `lamps generate/status/bench` and `Client.from_env()` need to reach it.
            "client_env": self.client_environment(),
            "redis": "external" if self.config.redis_url else "embedded",
            "log_dir": str(self.paths.log_dir.resolve()),
            "parts": {c.name: _describe(c) for c in self.supervisor.children.values()},
        }
        scratch = self.paths.endpoints.with_suffix(".tmp")
        scratch.write_text(json.dumps(document, indent=2) + "\n")
        scratch.replace(self.paths.endpoints)  # readers never see half a file

    def remove_endpoints(self) -> None:
        """Forget the endpoints, unless a later run has written its own since."""
        try:
            if json.loads(self.paths.endpoints.read_text()).get("pid") == os.getpid():
                self.paths.endpoints.unlink()
        except (OSError, ValueError):
            return


def _address(child: Child) -> str:
    return f"{parts.LOOPBACK}:{child.port}"


def _describe(child: Child) -> dict[str, Any]:
    described: dict[str, Any] = {"address": _address(child), "port": child.port}
    if child.metrics_port:  # Redis has none
        described["metrics_port"] = child.metrics_port
    return described | {"pid": child.pid, "log": str(child.log_path.resolve())}


async def _main(config: UpConfig) -> int:
    paths = RunPaths.create(config)
    say(f"logs in {paths.log_dir}")
    system = LocalSystem(config, paths)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if system.supervisor.stopping:
            say("second signal: killing every part now")
            system.supervisor.kill_all()
        else:
            say("stopping (Ctrl-C again to kill everything at once)")
            stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    running = asyncio.create_task(system.up_and_watch())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
        status = running.result() if running.done() else 0
    finally:  # even after a bug in lamps up itself, no part is left running
        for task in (running, stopped):
            task.cancel()
        await asyncio.gather(running, stopped, return_exceptions=True)
        await system.supervisor.stop(config.drain_seconds)
        system.remove_endpoints()
    say("stopped")
    return 1 if system.supervisor.killed else status
