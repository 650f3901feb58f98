"""`lamps`: run a service, the whole system on one machine, the client and the benchmarks.

lamps scheduler serve --port 50051
lamps worker serve
lamps predictor serve
lamps tool-runner serve
lamps up --workers 2 --time-scale 10
lamps generate "What is 2+3?"
lamps status
lamps bench --trace lamps_single_api --rates 4 --compare-simulator
lamps simulate --trace lamps_single_api --rates 3,4,5
lamps predictor train --trace fireact --backbone PATH --json report.json
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lamps.common import config as cfg
from lamps.common.version import package_version


@dataclass(frozen=True)
class ServiceCommand:
    """`lamps <name> serve`: where its configuration class and entry function live."""

    name: str
    help: str
    config: str  # "module:Class"
    main: str  # "module:function"


SERVICES = (
    ServiceCommand(
        "scheduler",
        "the front door: ranked queue, request lifecycle, worker gateway",
        "lamps.scheduler.config:SchedulerConfig",
        "lamps.scheduler.server:main",
    ),
    ServiceCommand(
        "worker",
        "an inference engine connected to the scheduler",
        "lamps.worker.config:WorkerConfig",
        "lamps.worker.server:main",
    ),
    ServiceCommand(
        "predictor",
        "predicts output length, tool and call duration",
        "lamps.predictor.config:PredictorConfig",
        "lamps.predictor.server:main",
    ),
    ServiceCommand(
        "tool-runner",
        "runs tool calls from a registry of safe tools",
        "lamps.tool_runner.config:ToolRunnerConfig",
        "lamps.tool_runner.server:main",
    ),
)


@dataclass(frozen=True)
class Command:
    """`lamps <name>` or `lamps <service> <name>` (beside `serve`): loaded only when used."""

    name: str
    help: str
    add_arguments: str  # "module:function(parser)"
    run: str  # "module:function(args) -> exit status"


ACTIONS = {
    "predictor": (
        Command(
            "train",
            "train the predictor's heads on a trace and report their accuracy",
            "lamps.predictor.cli:add_arguments",
            "lamps.predictor.cli:run",
        ),
    ),
}

TOOLS = (
    Command(
        "up",
        "start the whole system on this machine",
        "lamps.cli.up:add_arguments",
        "lamps.cli.up:run",
    ),
    Command(
        "simulate",
        "compare policies on a trace in virtual time",
        "lamps.simulator.cli:add_arguments",
        "lamps.simulator.cli:run",
    ),
    Command(
        "generate",
        "stream a generation from a running system",
        "lamps.cli.generate:add_arguments",
        "lamps.cli.generate:run",
    ),
    Command(
        "status",
        "show workers, KV usage and the queue",
        "lamps.cli.status:add_arguments",
        "lamps.cli.status:run",
    ),
    Command(
        "bench",
        "replay a trace against a running system and measure it",
        "lamps.bench.cli:add_arguments",
        "lamps.bench.cli:run",
    ),
    Command(
        "models",
        "prepare model weights (for example SmolLM2-135M for a CPU worker)",
        "lamps.cli.models:add_arguments",
        "lamps.cli.models:run",
    ),
)


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _serve(command: ServiceCommand) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            config = cfg.load(_load(command.config), args)
        except cfg.ConfigError as exc:
            args.parser.error(str(exc))
        status: int = _load(command.main)(config)
        return status

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lamps",
        description="LAMPS serving: tool-augmented LLM requests scheduled by memory x time.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SERVICES:
        group = commands.add_parser(command.name, help=f"the {command.name} service")
        actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
        serve = actions.add_parser(
            "serve",
            help=f"run the {command.name}: {command.help}",
            description=f"Run the {command.name}: {command.help}.",
        )
        cfg.add_arguments(serve, _load(command.config))
        serve.set_defaults(run=_serve(command), parser=serve)
        for action in ACTIONS.get(command.name, ()):
            sub = actions.add_parser(action.name, help=action.help)
            _load(action.add_arguments)(sub)
            sub.set_defaults(run=_load(action.run))
    for tool in TOOLS:
        command_parser = commands.add_parser(tool.name, help=tool.help, description=tool.help)
        _load(tool.add_arguments)(command_parser)
        command_parser.set_defaults(run=_load(tool.run))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
