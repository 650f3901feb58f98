"""Hostile calls to the calculator and HTTP tools of a running tool runner, each with the answer it
must get: a result, or a readable error of the right kind, never a crash or a fetch it should
not make.

`run_tool_probes(address, token, site_url)` runs them all and reports one `ProbeRow` per probe
(for tests and the reliability benchmark). The HTTP probes run when the tool runner serves the
`http` tool; those that need a hostile web site (redirects out, huge and slow answers) run when
`site_url` is a `probe_site()` that its allowlist covers (`probe_tools_file` configures that).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import grpc

from lamps.v1 import common_pb2
from lamps.v1 import tool_runner_pb2 as pb

OK = "OK"
INVALID = "INVALID_ARGUMENTS"
FAILED = "TOOL_FAILED"
TIMEOUT = "TIMEOUT"
# Long enough for any probe but the slow ones, which set their own bound below it.
CALL_TIMEOUT_S = 30.0
SLOW_BOUND_S = 1.0
NOT_ALLOWED = ("not on the tool runner's allowlist", "private address", "link-local address")


@dataclass(frozen=True)
class Probe:
    """One call and what it must get: `expected` (OK or an error code's name) and, if given,
    one of `reasons` in the error message (or the output)."""

    tool: str
    arguments: Any
    expected: str
    reasons: tuple[str, ...] = ()
    timeout_seconds: float = 0.0

    @property
    def summary(self) -> str:
        text = self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)
        return text if len(text) <= 60 else f"{text[:57]}... ({len(text)} chars)"


@dataclass(frozen=True)
class ProbeRow:
    """A probe's outcome: what was sent, what was expected, what came back."""

    tool: str
    input: str
    expected: str
    got: str
    ok: bool


def _calc(expression: str, expected: str, *reasons: str) -> Probe:
    return Probe("calculator", {"expression": expression}, expected, reasons)


def calculator_probes() -> list[Probe]:
    """Bombs, escapes and mistakes, each with the error the model must read."""
    return [
        _calc("2 + 3 * 4", OK, "14"),
        _calc("9**9**9", FAILED, "more than 1000 digits"),
        _calc("2 ** 10 ** 6", FAILED, "more than 1000 digits"),
        _calc("exp(10**999)", FAILED, "too large"),
        _calc("1e400", INVALID, "too large"),
        _calc("factorial(10**6)", INVALID, "only these functions"),
        _calc("1 << 100000", INVALID, "'LShift' is not allowed"),
        _calc("-" * 999 + "1", INVALID, "nested more than"),
        _calc("abs(" * 150 + "1" + ")" * 150, INVALID, "nested more than"),
        _calc("1" * 5000, INVALID, "too long"),
        _calc("\u0661\u0662 + 1", INVALID, "invalid character"),  # Arabic-Indic digits
        _calc("\uff11\uff12 + 1", INVALID, "invalid character"),  # full-width digits
        _calc("1/0", FAILED, "division by zero"),
        _calc("5 % 0", FAILED, "division by zero"),
        _calc("().__class__.__bases__", INVALID, "attribute access"),
        _calc("__import__('os').system('id')", INVALID, "only these functions"),
        _calc("open('/etc/passwd').read()", INVALID, "attribute access", "only these"),
        _calc("x + 1", INVALID, "unknown name"),
        Probe("calculator", "{", INVALID, ("not valid JSON",)),
        Probe("calculator", {"expression": 5}, INVALID, ("schema",)),
    ]


def http_probes(site_url: str | None) -> list[Probe]:
    """Targets the HTTP tool must refuse, and with a probe site, hostile answers."""
    probes = [
        Probe("http", {"url": "https://example.com/"}, FAILED, NOT_ALLOWED),
        Probe("http", {"url": "http://10.0.0.1/"}, FAILED, NOT_ALLOWED),
        Probe("http", {"url": "http://169.254.169.254/latest/meta-data/"}, FAILED, NOT_ALLOWED),
        Probe("http", {"url": "http://[::1]:1/"}, FAILED, NOT_ALLOWED),
        Probe("http", {"url": "http://0.0.0.0:1/"}, FAILED, NOT_ALLOWED),
        Probe("http", {"url": "http://2130706433/"}, FAILED, NOT_ALLOWED),
        Probe("http", {"url": "http://user:pw@127.0.0.1/"}, INVALID, ("credentials",)),
    ]
    for url in ("file:///etc/passwd", "ftp://example.com/", "gopher://127.0.0.1:70/", "data:,x"):
        probes.append(Probe("http", {"url": url}, INVALID, ("is not an http or https URL",)))
    if site_url is None:
        return probes
    slow = SLOW_BOUND_S
    return [
        *probes,
        Probe("http", {"url": f"{site_url}/text"}, OK, ("probe site",)),
        Probe("http", {"url": f"{site_url}/redirect-out"}, FAILED, NOT_ALLOWED),
        Probe("http", {"url": f"{site_url}/redirect-metadata"}, FAILED, NOT_ALLOWED),
        Probe("http", {"url": f"{site_url}/redirect-file"}, FAILED, ("does not follow",)),
        Probe("http", {"url": f"{site_url}/huge"}, OK, ("[response truncated at",)),
        Probe("http", {"url": f"{site_url}/slow"}, TIMEOUT, ("did not answer",), slow),
        Probe("http", {"url": f"{site_url}/drip"}, TIMEOUT, ("did not answer",), slow),
    ]


def probe_tools_file(max_response_bytes: int = 4096) -> dict[str, object]:
    """The tools-file section under which the HTTP probes expect the tool runner to run: the
    loopback probe site allowed, nothing else."""
    return {
        "http": {
            "allow": ["127.0.0.1"],
            "allow_private": ["127.0.0.1/32"],
            "max_response_bytes": max_response_bytes,
            "max_redirects": 3,
        }
    }


def run_tool_probes(
    tool_runner_address: str, token: str | None = None, site_url: str | None = None
) -> list[ProbeRow]:
    """Run every probe the tool runner can take (see the module docstring)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(tool_runner_address) as channel:
        list_tools = channel.unary_unary(
            "/lamps.v1.ToolRunnerService/ListTools",
            pb.ListToolsRequest.SerializeToString,
            pb.ListToolsResponse.FromString,
        )
        tools = {
            t.name for t in list_tools(pb.ListToolsRequest(), metadata=metadata, timeout=10).tools
        }
        probes = calculator_probes() + (http_probes(site_url) if "http" in tools else [])
        execute = channel.unary_unary(
            "/lamps.v1.ToolRunnerService/Execute",
            pb.ExecuteRequest.SerializeToString,
            pb.ExecuteResponse.FromString,
        )
        return [_run(execute, probe, metadata) for probe in probes]


def _run(execute: Any, probe: Probe, metadata: tuple[tuple[str, str], ...]) -> ProbeRow:
    arguments = probe.arguments if isinstance(probe.arguments, str) else json.dumps(probe.arguments)
    request = pb.ExecuteRequest(
        call=common_pb2.ToolCall(call_id="probe", name=probe.tool, arguments_json=arguments),
        request_id="probe",
        timeout_seconds=probe.timeout_seconds,
    )
    try:
        result: common_pb2.ToolResult = execute(
            request, metadata=metadata, timeout=CALL_TIMEOUT_S
        ).result
    except grpc.RpcError as error:
        got = f"RPC {error.code().name}: {error.details()}"
        return ProbeRow(probe.tool, probe.summary, probe.expected, got, False)
    code = common_pb2.ToolErrorCode.Name(result.error.code).removeprefix("TOOL_ERROR_CODE_")
    code = OK if code == "UNSPECIFIED" else code
    text = result.output if code == OK else result.error.message
    ok = code == probe.expected and (not probe.reasons or any(r in text for r in probe.reasons))
    got = f"{code}: {text[:100]}"
    return ProbeRow(probe.tool, probe.summary, probe.expected, got, ok)


# The hostile site ------------------------------------------------------------------------------


class _ProbeSiteHandler(BaseHTTPRequestHandler):
    """Redirects out of the allowlist, an endless body, a server that never answers, and one
    that answers a byte at a time."""

    REDIRECTS: ClassVar[dict[str, str]] = {
        "/redirect-out": "http://example.com/",
        "/redirect-metadata": "http://169.254.169.254/latest/meta-data/",
        "/redirect-file": "file:///etc/passwd",
    }
    # How long the slow endpoints stall: past any probe's bound, short of a stuck test.
    STALL_S = 5.0

    def do_GET(self) -> None:
        # The tool runner hangs up on a stalled or endless answer, as it should.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._answer()

    def _answer(self) -> None:
        if self.path in self.REDIRECTS:
            self._head(302, location=self.REDIRECTS[self.path])
        elif self.path == "/text":
            self._head(200, length=len(b"hello from the probe site"))
            self.wfile.write(b"hello from the probe site")
        elif self.path == "/huge":  # no length: the body runs until the client gives up
            self._head(200)
            for _ in range(64):
                self.wfile.write(b"z" * 65536)
        elif self.path == "/slow":
            time.sleep(self.STALL_S)  # the hostile server's behaviour, not synchronisation
            self._head(200, length=2)
            self.wfile.write(b"ok")
        elif self.path == "/drip":
            self._head(200)
            for _ in range(int(self.STALL_S / 0.1)):
                self.wfile.write(b"d")
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self._head(404, length=0)

    def _head(self, status: int, length: int | None = None, location: str = "") -> None:
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        if length is not None:
            self.send_header("content-length", str(length))
        if location:
            self.send_header("location", location)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@contextmanager
def probe_site() -> Iterator[str]:
    """A hostile web site on loopback, for the HTTP probes; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ProbeSiteHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
