"""`calculator`: arithmetic that a hostile expression cannot turn into a denial of service.

The expression is parsed with `ast` and evaluated by walking a whitelist of nodes; nothing is ever
compiled or passed to `eval`. Every bound is checked before the work it limits: the text's length
before parsing, the tree's depth and size before evaluating, and a power's result size before
computing it (so `9**9**9` is refused, not attempted). Integers stay exact up to
`MAX_RESULT_DIGITS` digits; floats must stay finite.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lamps.tool_runner.errors import InvalidArguments, ToolFailure
from lamps.tool_runner.registry import Tool, ToolSpec

Number = int | float

MAX_EXPRESSION_CHARS = 1000
MAX_DEPTH = 100
MAX_NODES = 500
MAX_RESULT_DIGITS = 1000
_INT_LIMIT = 10**MAX_RESULT_DIGITS
_MAX_INT_BITS = _INT_LIMIT.bit_length()
MAX_ROUND_DIGITS = 100

CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


@dataclass(frozen=True)
class Function:
    """A function expressions may call, with how many arguments it takes."""

    apply: Callable[..., Any]
    min_args: int
    max_args: int


def _round(value: Number, digits: Number = 0) -> Number:
    if not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS:
        raise InvalidArguments(
            f"round's second argument must be a whole number from {-MAX_ROUND_DIGITS} "
            f"to {MAX_ROUND_DIGITS}"
        )
    return round(value, digits)


FUNCTIONS: dict[str, Function] = {
    "abs": Function(abs, 1, 1),
    "sqrt": Function(math.sqrt, 1, 1),
    "exp": Function(math.exp, 1, 1),
    "log": Function(math.log, 1, 2),
    "log10": Function(math.log10, 1, 1),
    "log2": Function(math.log2, 1, 1),
    "sin": Function(math.sin, 1, 1),
    "cos": Function(math.cos, 1, 1),
    "tan": Function(math.tan, 1, 1),
    "floor": Function(math.floor, 1, 1),
    "ceil": Function(math.ceil, 1, 1),
    "round": Function(_round, 1, 2),
    "min": Function(min, 1, 64),
    "max": Function(max, 1, 64),
}

_ALLOWED = "numbers, + - * / // % ** and parentheses, " + ", ".join(
    [*(f"{name}()" for name in FUNCTIONS), *CONSTANTS]
)

# What the model is told a refused construct is, so it can rewrite the expression.
_CONSTRUCTS: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Lambda: "lambda",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a comprehension",
    ast.Compare: "a comparison",
    ast.BoolOp: "'and'/'or'",
    ast.IfExp: "'if'/'else'",
    ast.NamedExpr: "assignment",
    ast.JoinedStr: "text",
    ast.BitXor: "'^' (write powers as **)",
    ast.Not: "'not'",
    ast.Invert: "'~'",
}


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression; raises ToolFailure with a readable reason."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise InvalidArguments(
            f"the expression is {len(expression)} characters; the limit is {MAX_EXPRESSION_CHARS}"
        )
    if not expression.strip():
        raise InvalidArguments("the expression is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise InvalidArguments(f"the expression is not valid arithmetic: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise InvalidArguments("the expression is nested too deeply") from None
    _check(tree.body)
    return _eval(tree.body)


def format_number(value: Number) -> str:
    """Integers exactly; floats to 15 significant digits, so 0.1 + 0.2 reads 0.3."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.15g}"


def _check(root: ast.expr) -> None:
    """Refuse trees that are too deep, too large, or use anything off the whitelist."""
    nodes = 0
    stack: list[tuple[ast.AST, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, ast.expr_context):
            continue
        nodes += 1
        if depth > MAX_DEPTH:
            raise InvalidArguments(f"the expression is nested more than {MAX_DEPTH} levels deep")
        if nodes > MAX_NODES:
            raise InvalidArguments(f"the expression has more than {MAX_NODES} parts")
        _check_node(node)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _check_node(node: ast.AST) -> None:
    match node:
        case ast.Constant(value=value):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArguments(f"{value!r} is not a number; allowed: {_ALLOWED}")
            if not math.isfinite(value):
                raise InvalidArguments(f"the number {value!r} is too large")
        case ast.Name(id=name):
            if name not in CONSTANTS and name not in FUNCTIONS:
                raise InvalidArguments(f"unknown name {name!r}; allowed: {_ALLOWED}")
        case ast.Call(func=func, args=args, keywords=keywords):
            _check_call(func, args, keywords)
        case ast.BinOp() | ast.UnaryOp():
            pass
        case ast.UAdd() | ast.USub() | ast.Pow():
            pass
        case ast.operator() if type(node) in _BINARY:
            pass
        case _:
            what = _CONSTRUCTS.get(type(node), f"'{type(node).__name__}'")
            raise InvalidArguments(f"{what} is not allowed; allowed: {_ALLOWED}")


def _check_call(func: ast.expr, args: list[ast.expr], keywords: list[ast.keyword]) -> None:
    if not isinstance(func, ast.Name) or func.id not in FUNCTIONS:
        raise InvalidArguments(f"only these functions can be called: {', '.join(FUNCTIONS)}")
    function = FUNCTIONS[func.id]
    if keywords or any(isinstance(arg, ast.Starred) for arg in args):
        raise InvalidArguments(f"{func.id}() takes plain positional arguments")
    if not function.min_args <= len(args) <= function.max_args:
        expected = (
            str(function.min_args)
            if function.min_args == function.max_args
            else f"{function.min_args} to {function.max_args}"
        )
        raise InvalidArguments(f"{func.id}() takes {expected} arguments, not {len(args)}")


def _eval(node: ast.expr) -> Number:
    match node:
        case ast.Constant(value=int() | float() as value):
            return value
        case ast.Name(id=name) if name in CONSTANTS:
            return CONSTANTS[name]
        case ast.Name(id=name):
            raise InvalidArguments(f"{name} is a function; call it like {name}(2)")
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            value = _eval(operand)
            return _checked(lambda: -value)
        case ast.UnaryOp(op=ast.UAdd(), operand=operand):
            return _eval(operand)
        case ast.BinOp(left=left, op=ast.Pow(), right=right):
            base, exponent = _eval(left), _eval(right)
            return _checked(lambda: _power(base, exponent))
        case ast.BinOp(left=left, op=op, right=right):
            a, b = _eval(left), _eval(right)
            return _checked(lambda: _BINARY[type(op)](a, b))
        case ast.Call(func=ast.Name(id=name), args=args):
            values = [_eval(arg) for arg in args]
            return _checked(lambda: FUNCTIONS[name].apply(*values), name)
    raise InvalidArguments(f"cannot evaluate {ast.dump(node)[:80]}")  # _check refused it already


def _power(base: Number, exponent: Number) -> Number:
    """base ** exponent, refused before computing when an integer result would be too long."""
    # bit_length(base**n) > (bit_length(base) - 1) * n: refuse before spending the time.
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and (base.bit_length() - 1) * exponent > _MAX_INT_BITS
    ):
        raise ToolFailure(f"the result has more than {MAX_RESULT_DIGITS} digits")
    result: Number = base**exponent
    return result


def _checked(compute: Callable[[], Any], function: str = "") -> Number:
    """Run one step, turning arithmetic errors and oversized or non-real results into reasons."""
    where = f"{function}(): " if function else ""
    try:
        value = compute()
    except ZeroDivisionError:
        raise ToolFailure(f"{where}division by zero") from None
    except OverflowError:
        raise ToolFailure(f"{where}the result is too large") from None
    except ValueError as exc:
        raise ToolFailure(f"{where}{exc}") from None
    if isinstance(value, complex):
        raise ToolFailure(f"{where}the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolFailure(f"{where}the result is too large")
    if isinstance(value, int) and abs(value) >= _INT_LIMIT:
        raise ToolFailure(f"{where}the result has more than {MAX_RESULT_DIGITS} digits")
    if not isinstance(value, int | float):
        raise ToolFailure(f"{where}the result is not a number")
    return value


class CalculatorTool(Tool):
    """The `calculator` built-in (InferCept's math tool type, for real)."""

    def __init__(self) -> None:
        self._spec = ToolSpec(
            name="calculator",
            description=(
                "Evaluates an arithmetic expression and returns the number. Allowed: "
                f"{_ALLOWED}. Example: sqrt(2) * (3 + 4) ** 2"
            ),
            arguments_schema={
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "description": "The arithmetic expression, such as (2 + 3) * 4",
                        "maxLength": MAX_EXPRESSION_CHARS,
                    }
                },
                "required": ["expression"],
                "additionalProperties": False,
            },
            timeout_seconds=1.0,
            max_concurrency=64,
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: dict[str, Any]) -> str:
        return format_number(evaluate(arguments["expression"]))
