"""The wheel holds every package of every source root under the one `lamps` namespace."""

from __future__ import annotations

import tomllib
import zipfile
from pathlib import Path

from hatchling.builders.wheel import WheelBuilder

from tests.support.processes import REPO_ROOT


def source_roots() -> list[Path]:
    """Every folder holding a `lamps/` package tree: one per service, and the client."""
    return sorted(
        p.parent
        for p in REPO_ROOT.glob("*/**/lamps")
        if ".venv" not in p.parts and any(p.glob("*/__init__.py"))
    )


def test_every_source_root_is_declared_for_wheel_and_editable_installs() -> None:
    wheel = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"][
        "targets"
    ]["wheel"]
    roots = {str(root.relative_to(REPO_ROOT)) for root in source_roots()}
    assert set(wheel["dev-mode-dirs"]) == roots
    assert {s.removesuffix("/lamps") for s in wheel["sources"]} == roots
    assert {s.removesuffix("/lamps") for s in wheel["only-include"]} == roots


def test_wheel_contains_every_package_and_no_namespace_init(tmp_path: Path) -> None:
    built = next(WheelBuilder(str(REPO_ROOT)).build(directory=str(tmp_path), versions=["standard"]))
    names = set(zipfile.ZipFile(built).namelist())
    packages = {
        f"lamps/{package.name}/__init__.py"
        for root in source_roots()
        for package in (root / "lamps").iterdir()
        if (package / "__init__.py").exists()
    }
    assert packages <= names
    assert {"lamps/v1/scheduler_pb2.py", "lamps/v1/scheduler_pb2_grpc.pyi"} <= names
    # Package data: the agent traces `lamps predictor train --trace fireact` reads, with provenance.
    assert {
        "lamps/predictor/data/fireact_agent_traces.jsonl",
        "lamps/predictor/data/fireact_LICENSE.txt",
        "lamps/predictor/data/README.md",
    } <= names
    # `lamps` stays a namespace package, so another distribution could add to it.
    assert "lamps/__init__.py" not in names
