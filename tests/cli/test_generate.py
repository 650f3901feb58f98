"""`lamps generate` against a live system, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest

from lamps.cli.main import main
from lamps.client import Client, RequestState
from tests.support.processes import REPO_ROOT, lamps_command
from tests.support.system import CLIENT_TOKEN, LocalSystem

REPLAY = ["--replay", "20:emulated.math:1.0:5", "--replay", "10"]
TOOL_LINE = re.compile(
    r"^\[tool emulated\.math \{.*\} -> .+ \(\d+\.\d\d s\), strategy (preserve|discard|swap)\]$"
)


def test_generate_streams_text_and_shows_tool_calls_and_a_summary(
    connection: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "What is 2+3?", *REPLAY, *connection]) == 0
    out, err = capsys.readouterr()
    assert out.strip()
    assert out.endswith("\n")
    lines = err.splitlines()
    assert [line for line in lines if TOOL_LINE.match(line)] == [lines[0]]
    assert re.match(
        r"^request \S+: finished \((length|stop)\), 30 tokens, 1 tool call, "
        r"TTFT \d+\.\d{3} s, total \d+\.\d{3} s$",
        lines[-1],
    )


def test_generate_json_prints_every_event_as_a_json_line(
    connection: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "hello", *REPLAY, "--label", "run=cli", "--json", *connection]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["type"] == "accepted"
    assert events[-1]["type"] == "finished"
    assert events[-1]["state"] == "finished"
    assert [e["offset"] for e in events] == list(range(len(events)))
    assert sum(len(e["token_ids"]) for e in events if e["type"] == "tokens") == 30
    (call,) = [e["call"] for e in events if e["type"] == "tool_call_started"]
    assert call["name"] == "emulated.math"
    (result,) = [e["result"] for e in events if e["type"] == "tool_call_finished"]
    assert (result["call_id"], result["error"]) == (call["call_id"], None)


def test_a_refused_request_exits_1_with_the_servers_message(
    connection: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "", *connection]) == 1
    assert capsys.readouterr().err.startswith("lamps generate: INVALID_ARGUMENT: ")
    assert main(["generate", "hi", "--address", connection[1], "--token", "wrong"]) == 1
    assert capsys.readouterr().err.startswith("lamps generate: UNAUTHENTICATED: ")


def test_a_malformed_replay_segment_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["generate", "hi", "--replay", "20:emulated.math"])
    assert exited.value.code == 2
    assert "TOKENS:TOOL:SECONDS:TOOL_TOKENS" in capsys.readouterr().err


def test_ctrl_c_cancels_the_request_on_the_server(system: LocalSystem) -> None:
    # Address and token from the environment, as a user sets them once per shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPS_")}
    env |= {"LAMPS_ADDRESS": system.target, "LAMPS_TOKEN": CLIENT_TOKEN}
    proc = subprocess.Popen(
        lamps_command(
            "generate", "a long call", "--json", "--replay", "5:emulated.qa:200:4", "--replay", "5"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        # A shell's background jobs may inherit SIGINT ignored; a terminal's Ctrl-C is not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    request_id = ""
    for line in proc.stdout:
        event = json.loads(line)
        request_id = event["request_id"]
        if event["type"] == "tool_call_started":
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"cancelled request {request_id}" in err
    with Client(system.target, token=CLIENT_TOKEN) as client:
        assert client.get_request(request_id).state is RequestState.CANCELLED
