"""The calculator and HTTP probes the reliability benchmark reports, run against the shared tool
runner, and random calculator input through the server: a number or a readable error, always."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamps.v1 import common_pb2
from lamps.v1 import tool_runner_pb2 as pb
from tests.support.tool_probes import probe_site, run_tool_probes
from tests.tool_runner.conftest import RunningToolRunner

READABLE = {common_pb2.TOOL_ERROR_CODE_INVALID_ARGUMENTS, common_pb2.TOOL_ERROR_CODE_TOOL_FAILED}


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with probe_site() as url:
        yield url


def test_every_probe_gets_the_answer_it_must(tool_runner: RunningToolRunner, site: str) -> None:
    # The shared tool runner allows 127.0.0.1 (any port), so the probe site is reachable.
    rows = run_tool_probes(tool_runner.process.target, site_url=site)
    assert {row.tool for row in rows} == {"calculator", "http"}
    assert [row for row in rows if not row.ok] == []


def arithmetic() -> st.SearchStrategy[str]:
    """Expressions that parse (nested operators, calls, huge literals) and text that does not."""
    leaf = st.one_of(
        st.integers(-(10**30), 10**30).map(str),
        st.floats(allow_nan=False).map(repr),
        st.sampled_from(["pi", "e", "9**9", "10**999", "1e308", "0", "x", "()", "\u0661", "1j"]),
    )
    operator = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "<<", "&", "^"])
    function = st.sampled_from(["sqrt", "exp", "log", "abs", "round", "floor", "factorial"])
    expression = st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.tuples(inner, operator, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(function, st.lists(inner, max_size=3)).map(
                lambda t: f"{t[0]}({', '.join(t[1])})"
            ),
            inner.map(lambda text: "-" + text),
        ),
        max_leaves=30,
    )
    return st.one_of(expression, st.text(max_size=200))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(expression=arithmetic())
def test_random_calculator_input_gets_a_number_or_a_readable_error(
    tool_runner: RunningToolRunner, expression: str
) -> None:
    with grpc.insecure_channel(tool_runner.process.target) as channel:
        execute = channel.unary_unary(
            "/lamps.v1.ToolRunnerService/Execute",
            pb.ExecuteRequest.SerializeToString,
            pb.ExecuteResponse.FromString,
        )
        arguments = json.dumps({"expression": expression})
        call = common_pb2.ToolCall(call_id="c", name="calculator", arguments_json=arguments)
        result = execute(pb.ExecuteRequest(call=call), timeout=30).result
    if result.error.code:
        assert result.error.code in READABLE, result
        assert result.error.message
        assert result.output == ""
    else:
        float(result.output)  # a number, as text
    assert tool_runner.process.proc.poll() is None
