"""`lamps generate "prompt"`: stream a generation from a running system.

The text goes to stdout as it arrives; tool calls and the closing summary go to stderr, so
`lamps generate ... > answer.txt` keeps the answer alone. `--json` prints every event instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TextIO

from lamps.cli.connection import add_connection_arguments, client_from_args, report_error
from lamps.client import (
    Event,
    Finished,
    LampsError,
    ReplaySegment,
    RequestState,
    Tokens,
    ToolCallFinished,
    ToolCallStarted,
)

SHOWN_OUTPUT_CHARS = 60
EXIT_INTERRUPTED = 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=256,
        help="most tokens to generate over the whole request; 0: the server's limit",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--top-p", type=float, default=0.0, help="nucleus mass; 0 means 1")
    parser.add_argument("--seed", type=int, default=0, help="0: unseeded")
    parser.add_argument(
        "--stop", action="append", default=[], help="a string that ends the generation (repeat)"
    )
    parser.add_argument(
        "--tool",
        action="append",
        default=[],
        dest="tools",
        help="a tool the model may call (repeat); none: every registered tool",
    )
    parser.add_argument("--model", default="", help="empty: the cluster's only model")
    parser.add_argument(
        "--replay",
        action="append",
        default=[],
        type=_segment,
        metavar="TOKENS[:TOOL:SECONDS:TOOL_TOKENS]",
        help="force a segment of exact length, ending in a tool call (repeat, in order; the last "
        "calls no tool), as trace replay does: --replay 20:emulated.math:1.5:5 --replay 10",
    )
    parser.add_argument(
        "--label", action="append", default=[], type=_label, metavar="KEY=VALUE", help="(repeat)"
    )
    parser.add_argument("--json", action="store_true", help="print each event as a JSON line")
    add_connection_arguments(parser)


def _segment(text: str) -> ReplaySegment:
    parts = text.split(":")
    try:
        if len(parts) == 1:
            return ReplaySegment(int(parts[0]))
        if len(parts) == 4:
            return ReplaySegment(int(parts[0]), parts[1], float(parts[2]), int(parts[3]))
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not TOKENS or TOKENS:TOOL:SECONDS:TOOL_TOKENS")


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def run(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    request_id = ""
    try:
        with client:
            printer = _JsonPrinter() if args.json else _TextPrinter(sys.stdout, sys.stderr)
            for event in client.generate(
                args.prompt,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
                seed=args.seed,
                stop=args.stop,
                tools=args.tools,
                replay=args.replay or None,
                labels=dict(args.label),
                model=args.model,
            ):
                request_id = event.request_id
                printer.show(event)
                if isinstance(event, Finished):
                    return _exit_status(event)
    except LampsError as error:
        return report_error("generate", client.target, error)
    except KeyboardInterrupt:
        return _cancel(args, request_id)
    print("lamps generate: the stream ended before the request did", file=sys.stderr)
    return 1


def _exit_status(end: Finished) -> int:
    if end.state is RequestState.FINISHED:
        return 0
    detail = f": {end.error_message}" if end.error_message else ""
    print(f"lamps generate: request {end.request_id} {end.state}{detail}", file=sys.stderr)
    return 1


def _cancel(args: argparse.Namespace, request_id: str) -> int:
    """Ctrl-C: cancel the request on the server too, so it stops holding a GPU."""
    if request_id:
        with client_from_args(args, timeout_s=10) as client:
            try:
                client.cancel(request_id)
            except LampsError as error:
                print(f"lamps generate: could not cancel {request_id}: {error}", file=sys.stderr)
                return EXIT_INTERRUPTED
        print(f"lamps generate: cancelled request {request_id}", file=sys.stderr)
    return EXIT_INTERRUPTED


class _JsonPrinter:
    """One JSON object per event on stdout, its kind under "type"."""

    def show(self, event: Event) -> None:
        print(json.dumps({"type": event.KIND, **dataclasses.asdict(event)}), flush=True)


class _TextPrinter:
    """The text as it streams; tool calls and the summary on their own lines on stderr."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.calls: dict[str, ToolCallStarted] = {}
        self.line_open = False  # stdout holds text not yet ended by a newline

    def show(self, event: Event) -> None:
        if isinstance(event, Tokens) and event.text:
            self.out.write(event.text)
            self.out.flush()
            self.line_open = not event.text.endswith("\n")
        elif isinstance(event, ToolCallStarted):
            self.calls[event.call.call_id] = event
        elif isinstance(event, ToolCallFinished):
            self._line(self._tool_line(event))
        elif isinstance(event, Finished):
            if self.line_open:  # the answer ends with a newline, as text files do
                self.out.write("\n")
                self.line_open = False
            self._line(_summary(event))

    def _line(self, text: str) -> None:
        # On a terminal both streams share the screen: end the text's line first.
        if self.line_open and self.out.isatty():
            self.out.write("\n")
            self.out.flush()
            self.line_open = False
        print(text, file=self.err, flush=True)

    def _tool_line(self, event: ToolCallFinished) -> str:
        result = event.result
        started = self.calls.get(result.call_id)
        name, arguments, strategy = ("?", "", "?")
        if started is not None:
            name, arguments = started.call.name, started.call.arguments_json
            strategy = str(started.strategy)
        if result.error is not None:
            answer = f"error {result.error.code}: {result.error.message}"
        else:
            answer = _shorten(result.output)
        took = f"{result.duration_s:.2f} s"
        return f"[tool {name} {arguments} -> {answer} ({took}), strategy {strategy}]"


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SHOWN_OUTPUT_CHARS else flat[: SHOWN_OUTPUT_CHARS - 3] + "..."


def _summary(end: Finished) -> str:
    tokens = _count(end.usage.completion_tokens, "token")
    calls = _count(end.usage.tool_calls, "tool call")
    return (
        f"request {end.request_id}: {end.state} ({end.reason}), {tokens}, {calls}, "
        f"TTFT {end.timings.ttft_s:.3f} s, total {end.timings.total_s:.3f} s"
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
