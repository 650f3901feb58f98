"""The calculator: right answers, and hostile input refused with a reason, never run."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lamps.tool_runner.errors import InvalidArguments, ToolFailure
from lamps.tool_runner.tools.calculator import evaluate, format_number
from lamps.v1 import common_pb2
from tests.tool_runner.conftest import RunningToolRunner

INVALID = common_pb2.TOOL_ERROR_CODE_INVALID_ARGUMENTS
FAILED = common_pb2.TOOL_ERROR_CODE_TOOL_FAILED


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2", "3"),
        ("2 ** 10", "1024"),
        ("7 / 2", "3.5"),
        ("7 // 2", "3"),
        ("-7 % 3", "2"),
        ("0.1 + 0.2", "0.3"),
        ("((((1))))", "1"),
        ("-(+3)", "-3"),
        ("sqrt(16)", "4"),
        ("abs(-2.5)", "2.5"),
        ("max(1, 5, 3) - min(4, 2)", "3"),
        ("round(3.14159, 2)", "3.14"),
        ("log(8, 2)", "3"),
        ("floor(2.7) + ceil(2.1)", "5"),
        ("pi", "3.14159265358979"),
        ("2 ** -1", "0.5"),
        ("1e3", "1000"),
        ("1e20", "1e+20"),
        ("10 ** 999", "1" + "0" * 999),
        ("(-1) ** (10 ** 999)", "1"),
    ],
)
def test_arithmetic_evaluates(expression: str, expected: str) -> None:
    assert format_number(evaluate(expression)) == expected


HOSTILE = [
    # Sizes that would take the process down if attempted.
    ("9**9**9", FAILED, "more than 1000 digits"),
    ("10 ** 1000", FAILED, "more than 1000 digits"),
    ("2 ** 10 ** 6", FAILED, "more than 1000 digits"),
    ("10**999 * 10**999", FAILED, "more than 1000 digits"),
    ("2.0 ** 5000", FAILED, "too large"),
    ("1.5 ** (10 ** 999)", FAILED, "too large"),
    ("exp(1000)", FAILED, "too large"),
    ("1e400", INVALID, "too large"),
    ("round(1.5, 10 ** 9)", INVALID, "round's second argument"),
    ("1 << 100000", INVALID, "'LShift' is not allowed"),
    ("-" * 999 + "1", INVALID, "nested more than 100 levels"),
    ("abs(" * 150 + "1" + ")" * 150, INVALID, "nested more than 100 levels"),
    ("1+" * 499 + "1", INVALID, "nested more than 100 levels"),
    ("1" * 1001, INVALID, "the limit is 1000"),
    ("(" * 500 + "1" + ")" * 500, INVALID, "the limit is 1000"),
    ("(" * 250 + "1" + ")" * 250, INVALID, "not valid arithmetic"),
    # Escapes from arithmetic.
    ("__import__('os').system('id')", INVALID, "only these functions can be called"),
    ("().__class__.__bases__", INVALID, "attribute access is not allowed"),
    ("(1).real", INVALID, "attribute access is not allowed"),
    ("x + 1", INVALID, "unknown name 'x'"),
    ("(lambda: 1)()", INVALID, "only these functions can be called"),
    ("lambda: 1", INVALID, "lambda is not allowed"),
    ("[x for x in range(10)]", INVALID, "a comprehension is not allowed"),
    ("sum(x for x in (1, 2))", INVALID, "only these functions can be called"),
    ("[1, 2][0]", INVALID, "indexing is not allowed"),
    ("'a' * 10", INVALID, "'a' is not a number"),
    ("True + 1", INVALID, "True is not a number"),
    ("1j", INVALID, "1j is not a number"),
    ("1 if 1 else 2", INVALID, "'if'/'else' is not allowed"),
    ("1 < 2", INVALID, "a comparison is not allowed"),
    ("(y := 2)", INVALID, "assignment is not allowed"),
    ("import os", INVALID, "not valid arithmetic"),
    ("2 ^ 3", INVALID, "write powers as **"),
    # Mistakes the model should be told about.
    ("1/0", FAILED, "division by zero"),
    ("5 % 0", FAILED, "division by zero"),
    ("sqrt(-1)", FAILED, "sqrt(): math domain error"),
    ("(-8) ** (1/3)", FAILED, "not a real number"),
    ("sqrt(1, 2)", INVALID, "sqrt() takes 1 arguments, not 2"),
    ("min()", INVALID, "min() takes 1 to 64 arguments, not 0"),
    ("sqrt(x=1)", INVALID, "plain positional arguments"),
    ("max(*[1, 2])", INVALID, "plain positional arguments"),
    ("sqrt", INVALID, "sqrt is a function"),
    ("", INVALID, "the expression is empty"),
    ("1 +", INVALID, "not valid arithmetic"),
]


@pytest.mark.parametrize(("expression", "code", "reason"), HOSTILE)
def test_hostile_or_wrong_input_is_refused_with_a_reason(
    expression: str, code: int, reason: str
) -> None:
    expected = InvalidArguments if code == INVALID else ToolFailure
    with pytest.raises(ToolFailure) as caught:
        evaluate(expression)
    assert type(caught.value) is expected
    assert reason in caught.value.message


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=120),
        st.text(alphabet="0123456789+-*/%(). e", max_size=80),
        st.text(alphabet="9*()-+", max_size=40),
    )
)
def test_any_text_gives_a_number_or_a_reason(expression: str) -> None:
    assert answer(expression)


def answer(expression: str) -> str:
    """The number as text, or the reason it was refused; anything else escapes and fails."""
    try:
        return format_number(evaluate(expression))
    except ToolFailure as failure:
        return failure.message


@pytest.mark.parametrize(
    ("expression", "code", "reason"),
    [
        ("9**9**9", FAILED, "more than 1000 digits"),
        ("-" * 999 + "1", INVALID, "nested more than 100 levels"),
        ("().__class__", INVALID, "attribute access"),
        ("open('/etc/passwd')", INVALID, "only these functions can be called"),
        ("1/0", FAILED, "division by zero"),
    ],
)
async def test_hostile_input_through_the_server_is_a_readable_error(
    tool_runner: RunningToolRunner, expression: str, code: int, reason: str
) -> None:
    result = await tool_runner.execute("calculator", {"expression": expression})
    assert result.error.code == code
    assert reason in result.error.message
    assert result.output == ""


async def test_the_calculator_answers_through_the_server(tool_runner: RunningToolRunner) -> None:
    result = await tool_runner.execute("calculator", {"expression": "sqrt(2) * (3 + 4) ** 2"})
    assert result.error.code == common_pb2.TOOL_ERROR_CODE_UNSPECIFIED
    assert result.output == "69.2964645562817"
    assert result.call_id == "call-1"


async def test_an_overlong_expression_fails_the_schema_through_the_server(
    tool_runner: RunningToolRunner,
) -> None:
    result = await tool_runner.execute("calculator", {"expression": "1" * 5000})
    assert result.error.code == INVALID
    assert "is too long" in result.error.message
