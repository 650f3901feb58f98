"""One configured tool runner, a real process on loopback, shared by the tool runner's tests.

Its tools file turns on everything: overrides, a declared emulated tool, the HTTP tool pointed at
a loopback site started here, an MCP server over stdio, and entry-point plugins.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from grpc import aio

from lamps.v1 import common_pb2
from lamps.v1 import tool_runner_pb2 as pb
from lamps.v1 import tool_runner_pb2_grpc as pb_grpc
from tests.support.plugin_tools import install_plugins
from tests.support.processes import REPO_ROOT, ServiceProcess, lamps_command, loopback_serve_args

BIG_BODY = b"a" * (1 << 20)
RESPONSE_LIMIT = 1024
TIME_SCALE = 0.01


class SiteHandler(BaseHTTPRequestHandler):
    """A loopback site: text, a large body, redirects in and out of the allowlist, an image."""

    REDIRECTS: ClassVar[dict[str, str]] = {
        "/redirect-in": "/text",
        "/redirect-out": "http://example.com/",
        "/redirect-private": "http://10.0.0.1/",
        "/redirect-loop": "/redirect-loop",
        "/redirect-file": "file:///etc/passwd",
    }

    def do_GET(self) -> None:
        if self.path in self.REDIRECTS:
            self._send(302, b"", "text/plain", location=self.REDIRECTS[self.path])
        elif self.path == "/text":
            self._send(200, b"hello from the allowed site", "text/plain; charset=utf-8")
        elif self.path == "/big":
            self._send(200, BIG_BODY, "text/plain")
        elif self.path == "/image":
            self._send(200, b"\x89PNG\r\n", "image/png")
        else:
            self._send(404, b"no such page", "text/plain")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self._send(200, b"posted: " + body, "text/plain")

    def _send(self, status: int, body: bytes, content_type: str, location: str = "") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        if location:
            self.send_header("location", location)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test output is for failures."""


@pytest.fixture(scope="session")
def http_site() -> Iterator[str]:
    """Base URL of the loopback site."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), SiteHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def mcp_server_entry(name: str = "testmcp", **extra: object) -> dict[str, object]:
    """A tools-file entry starting tests/support/mcp_server.py over stdio."""
    return {
        "name": name,
        "command": sys.executable,
        "args": ["-m", "tests.support.mcp_server"],
        "cwd": str(REPO_ROOT),
        **extra,
    }


TOOLS_FILE = {
    "tools": {
        "emulated.chatbot": {"max_concurrency": 1},
        "calculator": {"timeout_seconds": 2},
    },
    "emulated": [
        {
            "name": "search",
            "description": "A made-up search API",
            "duration_mean_seconds": 0.5,
            "duration_std_seconds": 0.1,
            "output_tokens": 7,
        }
    ],
    "http": {
        "allow": ["127.0.0.1", "10.0.0.1", "169.254.169.254"],
        "allow_private": ["127.0.0.1/32"],
        "max_response_bytes": RESPONSE_LIMIT,
        "max_redirects": 3,
    },
    "mcp_servers": [mcp_server_entry()],
}


@dataclass
class RunningToolRunner:
    """The shared tool runner and a stub connected to it."""

    process: ServiceProcess
    stub: pb_grpc.ToolRunnerServiceAsyncStub

    async def execute(
        self, name: str, arguments: object = None, timeout_seconds: float = 0.0
    ) -> common_pb2.ToolResult:
        """Call a tool; `arguments` is sent as JSON unless it is already a string."""
        text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
        response = await self.stub.Execute(
            pb.ExecuteRequest(
                call=common_pb2.ToolCall(call_id="call-1", name=name, arguments_json=text),
                request_id="req-1",
                timeout_seconds=timeout_seconds,
            ),
            timeout=30,
        )
        return response.result


def start_tool_runner(
    log_path: Path, *flags: str, env: dict[str, str] | None = None
) -> ServiceProcess:
    """`lamps tool-runner serve` on loopback; the caller terminates it."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPS_")}
    child_env.update(env or {})
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            lamps_command(*loopback_serve_args("tool-runner"), *flags),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=REPO_ROOT,
        )
    return ServiceProcess(proc=proc, log_path=log_path)


@pytest.fixture(scope="session")
async def tool_runner(
    http_site: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningToolRunner]:
    folder = tmp_path_factory.mktemp("tool-runner")
    tools_file = folder / "tools.yaml"
    tools_file.write_text(json.dumps(TOOLS_FILE))  # JSON is YAML too
    site = install_plugins(folder / "site")
    process = start_tool_runner(
        folder / "tool-runner.log",
        *("--tools-file", str(tools_file), "--seed", "7", "--time-scale", str(TIME_SCALE)),
        env={"PYTHONPATH": str(site)},
    )
    try:
        process.wait_ready()
        async with aio.insecure_channel(process.target) as channel:
            yield RunningToolRunner(process, pb_grpc.ToolRunnerServiceStub(channel))
    finally:
        status = process.terminate()
    assert status == 0, process.log_path.read_text()
