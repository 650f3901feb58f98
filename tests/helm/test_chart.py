"""The chart, rendered by the real helm: it lints, every object is valid Kubernetes (or KEDA and
Prometheus-operator) for every supported version, bad values are refused, names fit."""

from __future__ import annotations

import base64
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
from prometheus_client import REGISTRY

# Imported for their registrations: the series the dashboard reads must be ones we export.
import lamps.common.metrics
import lamps.predictor.metrics
import lamps.scheduler.metrics
import lamps.tool_runner.metrics  # noqa: F401
from tests.helm.chart import (
    CHART,
    VARIANTS,
    Manifest,
    component_of,
    find,
    helm,
    pod_labels,
    render,
    values_args,
    workloads,
)
from tests.support.processes import REPO_ROOT

# The Kubernetes versions the chart supports (Chart.yaml kubeVersion), each one whose schemas
# kubernetes-validate ships.
KUBERNETES_VERSIONS = tuple(f"1.{minor}.0" for minor in range(29, 38))
CRD_MODELS: dict[str, Any] = {"ScaledObject": ScaledObject, "ServiceMonitor": ServiceMonitor}
ALL_VALUES = [(), *[(name,) for name in VARIANTS]]
# Every optional object turned on at once, so each template is validated at least once.
EVERYTHING = ("metrics.serviceMonitor.enabled=true", "metrics.dashboard.enabled=true")
COMPONENTS = ("scheduler", "worker", "predictor", "tool-runner")


def ids(values: tuple[str, ...]) -> str:
    return values[0] if values else "defaults"


@pytest.mark.parametrize("values", ALL_VALUES, ids=ids)
def test_the_chart_lints_strictly(values: tuple[str, ...]) -> None:
    result = helm("lint", "--strict", str(CHART), *values_args(values, ()))
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_the_chart_carries_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


@pytest.mark.parametrize("values", ALL_VALUES, ids=ids)
def test_every_object_is_valid_for_every_supported_kubernetes(values: tuple[str, ...]) -> None:
    manifests = render(values, EVERYTHING)
    checked = 0
    for manifest in manifests:
        if manifest["kind"] in CRD_MODELS:
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)
            checked += 1
    assert checked >= 15 * len(KUBERNETES_VERSIONS)


def test_custom_resources_match_the_keda_and_prometheus_operator_models() -> None:
    manifests = render(("values-keda.yaml",))
    custom = [m for m in manifests if m["kind"] in CRD_MODELS]
    assert sorted(m["kind"] for m in custom) == ["ScaledObject"] + ["ServiceMonitor"] * 4
    for manifest in custom:
        model = CRD_MODELS[manifest["kind"]].model_validate(manifest)
        # The models ignore unknown fields: a field dropped on the way back is a misspelt one.
        assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == manifest


def test_hpa_mode_scales_workers_on_an_external_metric_and_drops_fixed_replicas() -> None:
    manifests = render((), ("worker.autoscaling.mode=hpa",))
    hpa = find(manifests, "HorizontalPodAutoscaler", "worker")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "lamps_scheduler_queued_requests"
    assert "replicas" not in find(manifests, "Deployment", "worker")["spec"]
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)
    assert not [m for m in manifests if m["kind"] == "ScaledObject"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("scheduler.replicaCuont=2", "scheduler: Additional property replicaCuont is not allowed"),
        ("replicaCount=2", "Additional property replicaCount is not allowed"),
        ("worker.replicaCount=-1", "worker.replicaCount: Must be greater than or equal to 0"),
        (
            "worker.autoscaling.mode=custom",
            'worker.autoscaling.mode must be one of the following: "keda", "hpa", "none"',
        ),
        ("predictor.port=70000", "predictor.port: Must be less than or equal to 65535"),
        ("logging.format=xml", 'logging.format must be one of the following: "json", "text"'),
        ("redis.external.url=http://x", "redis.external.url: Does not match pattern"),
        ("auth.tenants={a=b}", "auth.tenants.0: Does not match pattern"),
        (
            "scheduler.maxWaitingRequests=-1",
            "scheduler.maxWaitingRequests: Must be greater than or equal to 0",
        ),
    ],
)
def test_values_outside_the_schema_are_refused_with_the_key_named(
    setting: str, message: str
) -> None:
    result = helm("template", "lamps", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ("worker.autoscaling.mode=keda",),
            "worker.autoscaling.keda.serverAddress: the Prometheus",
        ),
        (("predictor.model.existingClaim=models",), "predictor.model.file: the model file's path"),
    ],
)
def test_values_that_need_another_are_refused_naming_it(
    settings: tuple[str, ...], message: str
) -> None:
    args = [arg for setting in settings for arg in ("--set", setting)]
    result = helm("template", "lamps", str(CHART), *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_names_stay_within_kubernetes_limits_for_a_long_release_name() -> None:
    release = "a-release-name-as-long-as-helm-allows-fifty-three-chr"
    assert len(release) == 53
    manifests = render((), EVERYTHING, release=release)
    kinds_and_names = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    assert len(kinds_and_names) == len(set(kinds_and_names))
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        assert len(name) <= 63, name
        if manifest["kind"] == "StatefulSet":
            assert len(name) <= 52, name  # room for controller-revision-hash labels
    components = {component_of(m) for m in workloads(manifests)}
    assert components == {*COMPONENTS, "redis"}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_network_policies_admit_only_the_scheduler_to_internal_services() -> None:
    manifests = render()
    pods = {component_of(w): pod_labels(w) for w in workloads(manifests)}
    expected_callers = {
        "worker": {"scheduler"},
        "predictor": {"scheduler"},
        "tool-runner": {"scheduler"},
        "redis": {"scheduler", "predictor"},
    }
    for target, callers in expected_callers.items():
        policy = find(manifests, "NetworkPolicy", target)
        selected = {
            c
            for c, labels in pods.items()
            if selects(policy["spec"]["podSelector"]["matchLabels"], labels)
        }
        assert selected == {target}
        grpc_rule = policy["spec"]["ingress"][0]
        admitted = {
            c
            for peer in grpc_rule["from"]
            for c, labels in pods.items()
            if selects(peer["podSelector"]["matchLabels"], labels)
        }
        assert admitted == callers, target
    scheduler = find(manifests, "NetworkPolicy", "scheduler")
    assert "from" not in scheduler["spec"]["ingress"][0]  # clients: anyone by default


def test_redis_is_reached_only_by_the_scheduler_without_the_predictors_redis() -> None:
    manifests = render((), ("predictor.useRedis=false",))
    (rule, *_) = find(manifests, "NetworkPolicy", "redis")["spec"]["ingress"]
    assert [
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]
    ] == ["scheduler"]


def test_services_select_their_components_pods() -> None:
    manifests = render()
    pods = {component_of(w): pod_labels(w) for w in workloads(manifests)}
    for service in (m for m in manifests if m["kind"] == "Service"):
        selected = {c for c, labels in pods.items() if selects(service["spec"]["selector"], labels)}
        assert selected == {component_of(service)}


def containers(manifest: Manifest) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = manifest["spec"]["template"]["spec"]["containers"]
    return found


def test_every_pod_runs_non_root_read_only_with_no_capabilities() -> None:
    for workload in workloads(render()):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in containers(workload):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts


@pytest.mark.parametrize("component", COMPONENTS)
def test_services_are_probed_on_grpc_health_at_their_port(component: str) -> None:
    (container,) = containers(find(render(), "Deployment", component))
    (grpc_port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": grpc_port}
    assert container["readinessProbe"]["grpc"]["port"] == grpc_port


def test_gpu_workers_request_gpus_tolerate_their_taint_and_drain_before_being_killed() -> None:
    worker = find(render(), "Deployment", "worker")
    (container,) = containers(worker)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    pod = worker["spec"]["template"]["spec"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    drain = 5 + float(env["LAMPS_DRAIN_DELAY_SECONDS"]) + float(env["LAMPS_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > drain


def test_cpu_values_request_no_gpu_and_run_the_cpu_worker_image() -> None:
    manifests = render(("values-cpu.yaml",))
    worker = find(manifests, "Deployment", "worker")
    (container,) = containers(worker)
    assert "nvidia.com/gpu" not in yaml.safe_dump(worker)
    assert container["image"] == "lamps/lamps-worker:0.1.0-cpu"
    # The sim workers run 10x faster; the scheduler reckons in their time, the tools sleep 1/10.
    engines = {e["name"]: e.get("value") for e in container["env"]}
    (scheduler,) = containers(find(manifests, "Deployment", "scheduler"))
    reckoning = {e["name"]: e.get("value") for e in scheduler["env"]}
    assert engines["LAMPS_TIME_SCALE"] == reckoning["LAMPS_TIME_SCALE"] == "10"
    (tools,) = containers(find(manifests, "Deployment", "tool-runner"))
    assert "--time-scale=0.1" in tools["args"]


def test_external_redis_comes_from_its_secret_and_no_redis_is_bundled() -> None:
    manifests = render(("values-external-redis.yaml",))
    assert not [m for m in manifests if component_of(m) == "redis"]
    (container,) = containers(find(manifests, "Deployment", "predictor"))
    (url,) = [e for e in container["env"] if e["name"] == "LAMPS_REDIS_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {"name": "lamps-redis", "key": "url"}


def test_an_existing_auth_secret_replaces_the_generated_one() -> None:
    manifests = render((), ("auth.existingSecret=my-tokens",))
    assert not [m for m in manifests if m["kind"] == "Secret" and component_of(m) == "auth"]
    (container,) = containers(find(manifests, "Deployment", "scheduler"))
    tokens = {"client-tokens", "cluster-tokens", "internal-token"}
    refs = {
        ref["name"]
        for e in container["env"]
        if (ref := e.get("valueFrom", {}).get("secretKeyRef")) and ref["key"] in tokens
    }
    assert refs == {"my-tokens"}


def test_each_tenant_gets_its_own_token_which_the_scheduler_accepts_as_theirs() -> None:
    manifests = render((), ("auth.tenants={alice,bob}", "scheduler.maxWaitingRequests=250"))
    secret = find(manifests, "Secret", "auth")
    data = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    alice, bob = data["tenant-alice"], data["tenant-bob"]
    assert alice != bob
    assert data["client-tokens"] == f"alice={alice},bob={bob}"
    (container,) = containers(find(manifests, "Deployment", "scheduler"))
    env = {e["name"]: e for e in container["env"]}
    assert env["LAMPS_AUTH_TOKENS"]["valueFrom"]["secretKeyRef"]["key"] == "client-tokens"
    assert env["LAMPS_MAX_WAITING_REQUESTS"]["value"] == "250"


@pytest.mark.parametrize("component", [*COMPONENTS, "redis"])
def test_each_component_can_be_turned_off(component: str) -> None:
    key = {"tool-runner": "toolRunner"}.get(component, component)
    # Without the bundled Redis the scheduler needs another one.
    elsewhere = ("redis.external.url=redis://redis.example:6379/0",) if component == "redis" else ()
    manifests = render((), (f"{key}.enabled=false", *elsewhere, *EVERYTHING))
    assert not [m for m in manifests if component_of(m) == component]


def test_a_scheduler_without_any_redis_is_refused() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"live in Redis: set redis\.enabled=true"):
        render((), ("redis.enabled=false",))


def test_a_vllm_worker_without_a_model_is_refused() -> None:
    with pytest.raises(
        pytest.fail.Exception, match=r"worker\.model: the vllm engine needs a model"
    ):
        render((), ("worker.model=",))


def test_the_dashboard_is_a_labelled_configmap_over_exported_series() -> None:
    dashboard = find(render((), EVERYTHING), "ConfigMap", "dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = dashboard["data"]["lamps.json"]
    for series in (
        "grpc_server_handled_total",
        "lamps_tool_calls_total",
        "lamps_predictor_",
        "lamps_build_info",
        "lamps_scheduler_queued_requests",
        "lamps_scheduler_requests_shed_total",
        "lamps_scheduler_worker_kv_used_ratio",
    ):
        assert series in text
    # Every series the dashboard reads is one a service exports.
    exported = _exported_series()
    for name in set(re.findall(r"\b(lamps_[a-z_]+|grpc_server_[a-z_]+)", text)):
        assert name.removesuffix("_bucket") in exported, name


def _exported_series() -> set[str]:
    """The metric names the services register, labelled series included before any child."""
    suffixes = {"counter": "_total", "info": "_info"}
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name + suffixes.get(family.type, ""))
    return names


def rendered_notes(tmp_path: Path) -> str:
    """NOTES.txt as `helm install` prints it. helm renders NOTES only against a cluster, so a copy
    of the chart carries them as a named template inside an object that `helm template` shows."""
    chart = tmp_path / "lamps"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "notes" -}}' + notes + "{{- end }}")
    (chart / "templates" / "notes.yaml").write_text('text: {{ include "notes" . | toJson }}\n')
    result = helm(
        "template",
        "lamps",
        str(chart),
        "--namespace",
        "lamps",
        "--show-only",
        "templates/notes.yaml",
    )
    text: str = yaml.safe_load(result.stdout)["text"]
    return text


def test_notes_say_how_to_port_forward_and_submit_a_request(tmp_path: Path) -> None:
    notes = rendered_notes(tmp_path)
    assert "kubectl --namespace lamps port-forward svc/lamps-scheduler 50051:50051" in notes
    assert "lamps.v1.SchedulerService/Generate" in notes
    assert "secret lamps-auth" in notes


def test_restricted_peers_admit_workers_and_the_named_clients_only() -> None:
    manifests = render(
        (),
        (
            "networkPolicy.clientsFrom[0].namespaceSelector.matchLabels.team=apps",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
            "redis.enabled=false",
            "redis.external.url=redis://redis.example:6379/0",
        ),
    )
    for manifest in manifests:
        for version in (KUBERNETES_VERSIONS[0], KUBERNETES_VERSIONS[-1]):
            kubernetes_validate.validate(manifest, version, strict=True)
    clients, metrics = find(manifests, "NetworkPolicy", "scheduler")["spec"]["ingress"]
    assert clients["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == (
        "worker"
    )
    assert clients["from"][1] == {"namespaceSelector": {"matchLabels": {"team": "apps"}}}
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    (container,) = containers(find(manifests, "Deployment", "predictor"))
    assert {"name": "LAMPS_REDIS_URL", "value": "redis://redis.example:6379/0"} in container["env"]


def test_only_the_leading_scheduler_is_ready() -> None:
    (container,) = containers(find(render(()), "Deployment", "scheduler"))
    # A standby is alive (overall health SERVING) but its SchedulerService is NOT_SERVING.
    assert container["readinessProbe"]["grpc"]["service"] == "lamps.v1.SchedulerService"
    assert "service" not in container["livenessProbe"]["grpc"]
    (env,) = [e for e in container["env"] if e["name"] == "LAMPS_REPLICA_ID"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
