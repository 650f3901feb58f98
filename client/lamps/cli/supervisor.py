"""The processes of `lamps up`: each started in its own session and tied to this process's life,
watched, restarted after a crash, and stopped in order.

Processes are watched by polling `Popen.poll()`: a handful of children checked ten times a second
costs nothing, needs no child-watcher threads, and a cancelled coroutine can never lose the
handle of a process it just started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

POLL_S = 0.1
# More crashes than this within the window and the part is broken, not unlucky.
MAX_CRASHES = 5
CRASH_WINDOW_S = 60.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1


class NotReadyError(Exception):
    """A started process will not become ready: the message says why."""


class Probe(Protocol):
    """Waits until a just-started child serves, recording its ports; raises NotReadyError."""

    async def __call__(self, child: Child) -> None: ...


@dataclass(frozen=True)
class Part:
    """One process of the system: its command, environment and place in the start order."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    # Parts start in increasing stage and stop in decreasing stage.
    stage: int
    probe: Probe
    # Least wait before a restart after a crash (the backoff may be longer).
    restart_delay_s: float = 0.0

    def pinned(self, port: int, metrics_port: int) -> Part:
        """The same part on the ports it got the first time, so that a restart keeps its
        address (the others hold it)."""
        argv = list(self.argv)
        for flag, value in (("--port", port), ("--metrics-port", metrics_port)):
            if flag in argv and value:
                argv[argv.index(flag) + 1] = str(value)
        return replace(self, argv=tuple(argv))


@dataclass
class Child:
    """A part as it runs now: its process, ports, log and recent crashes."""

    part: Part
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    metrics_port: int = 0
    # Where the current process's output begins in the log (a restart appends to it).
    log_offset: int = 0
    crashes: deque[float] = field(default_factory=deque)

    @property
    def name(self) -> str:
        return self.part.name

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_running(self) -> None:
        """Raise NotReadyError if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise NotReadyError(f"exited with status {self.proc.returncode}")

    def output(self) -> str:
        """What the current process has written so far."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return log.read().decode(errors="replace")

    def tail(self, lines: int = TAIL_LINES) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def spawn(self) -> None:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.part.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(self.part.env),
                # Its own session: the terminal's Ctrl-C reaches only `lamps up`, which stops the
                # parts in order.
                start_new_session=True,
                preexec_fn=_tie_to_parent(),
            )

    def signal_group(self, signum: int) -> None:
        """Signal the process and anything it started (its session's process group)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signum)


class PartError(Exception):
    """A part could not start, or crashed too often: stop everything."""

    def __init__(self, child: Child, reason: str) -> None:
        super().__init__(f"{child.name} {reason}")
        self.child = child
        self.reason = reason


def _tie_to_parent() -> Callable[[], None] | None:
    """A pre-exec hook that has the kernel send SIGTERM to the child when `lamps up` dies, even
    by SIGKILL (Linux), so that no part outlives it; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    # Resolved here, before the fork: the hook itself only makes two system calls.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent, term = os.getpid(), int(signal.SIGTERM)

    def tie() -> None:
        prctl(_PR_SET_PDEATHSIG, term)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)

    return tie


class Supervisor:
    """Starts parts, restarts those that crash, and stops them all in order."""

    def __init__(
        self,
        log_dir: Path,
        ready_timeout: float,
        say: Callable[[str], None],
        on_change: Callable[[], None],
    ) -> None:
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.killed = False
        self._log_dir = log_dir
        self._ready_timeout = ready_timeout
        self._say = say
        self._on_change = on_change

    async def start(self, part: Part) -> Child:
        """Start a part and wait until it is ready; PartError if it is not."""
        child = Child(part, self._log_dir / f"{part.name}.log")
        self.children[part.name] = child
        await self._launch(child, "starting")
        return child

    async def start_all(self, parts: Sequence[Part]) -> list[Child]:
        """Start parts side by side; the first failure is raised once all have settled."""
        results = await asyncio.gather(*(self.start(p) for p in parts), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, Child)]

    async def _launch(self, child: Child, verb: str) -> None:
        started = time.monotonic()
        child.spawn()
        self._say(f"{verb} {child.name} (pid {child.pid}) ...")
        try:
            await asyncio.wait_for(child.part.probe(child), self._ready_timeout)
        except TimeoutError:
            raise PartError(child, f"was not ready within {self._ready_timeout:g} s") from None
        except NotReadyError as exc:
            raise PartError(child, str(exc)) from None
        self._say(f"{child.name} ready in {time.monotonic() - started:.1f} s")
        self._on_change()

    async def supervise(self) -> None:
        """Restart parts that exit, until one crashes too often (PartError)."""
        watchers = [asyncio.create_task(self._watch(c)) for c in self.children.values()]
        try:
            await asyncio.gather(*watchers)
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def _watch(self, child: Child) -> None:
        while True:
            await wait_until(lambda: not child.running())
            await self._restart(child)

    async def _restart(self, child: Child) -> None:
        status = child.proc.returncode if child.proc is not None else None
        child.signal_group(signal.SIGKILL)  # anything it left behind
        now = time.monotonic()
        while child.crashes and now - child.crashes[0] > CRASH_WINDOW_S:
            child.crashes.popleft()
        child.crashes.append(now)
        if len(child.crashes) > MAX_CRASHES:
            raise PartError(
                child, f"crashed {len(child.crashes)} times within {CRASH_WINDOW_S:g} s"
            )
        delay = min(FIRST_BACKOFF_S * 2 ** (len(child.crashes) - 1), MAX_BACKOFF_S)
        delay = max(delay, child.part.restart_delay_s)
        self._say(f"{child.name} exited with status {status}; restarting in {delay:g} s")
        await asyncio.sleep(delay)
        child.part = child.part.pinned(child.port, child.metrics_port)
        try:
            await self._launch(child, "restarting")
        except PartError as exc:
            # Counted as the next crash when the watch loop sees the process gone.
            self._say(f"{exc}; log: {child.log_path}")
            child.signal_group(signal.SIGKILL)
            await asyncio.to_thread(_reap, child)

    async def stop(self, grace: float) -> None:
        """SIGTERM the parts stage by stage, highest first; SIGKILL what outlives `grace`."""
        self.stopping = True
        for stage in sorted({c.part.stage for c in self.children.values()}, reverse=True):
            group = [c for c in self.children.values() if c.part.stage == stage and c.proc]
            running = [c for c in group if c.running()]
            if running:
                await self._stop_group(running, grace)
            for child in group:
                child.signal_group(signal.SIGKILL)  # what the part started and left behind

    async def _stop_group(self, children: list[Child], grace: float) -> None:
        names = ", ".join(c.name for c in children)
        self._say(f"stopping {names} ...")
        started = time.monotonic()
        for child in children:
            assert child.proc is not None
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wait_until(lambda: not any(map(Child.running, children))), grace)
        for child in children:
            if child.running():
                self._say(f"{child.name} did not stop within {grace:g} s; killing it")
                child.signal_group(signal.SIGKILL)
            await asyncio.to_thread(_reap, child)
            code = child.proc.returncode if child.proc is not None else None
            if code not in (0, -signal.SIGKILL):
                self._say(f"{child.name} exited with status {code}; see {child.log_path}")
        self._say(f"stopped {names} in {time.monotonic() - started:.1f} s")

    def kill_all(self) -> None:
        """SIGKILL every part at once (a second Ctrl-C)."""
        self.stopping = self.killed = True
        for child in self.children.values():
            child.signal_group(signal.SIGKILL)


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds; the module's docstring says why processes are polled."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(POLL_S)


def _reap(child: Child) -> None:
    if child.proc is not None:
        child.proc.wait()
