"""The stack option `monitoring` (infra/monitoring_spec.py, infra/monitoring.py): off in the shipped stacks; when on,
a PodMonitor that validates against the Prometheus operator's CRD and selects every Ray pod's metrics port (or the
scrape annotations instead), the dashboards as ConfigMaps for Grafana's sidecar (the GPU row where NVIDIA GPUs are),
the Ray dashboard's Grafana/Prometheus settings on the head only, and the mistakes preview refuses."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from infra.config import REPO_ROOT, load_stack, to_pulumi_config
from infra.mocks import RecordingMocks, run_with_mocks
from infra.monitoring import POD_MONITOR_CRD
from infra.program import main
from infra.render import render
from tests.dashboards import GPU_ROW, panels
from tests.infra_helpers import STACKS, SECRETS, config_error, problems_of, with_values
from tests.manifests import K8S_VERSION, documents, strict_schema

CRD = REPO_ROOT / "tests" / "fixtures" / "prometheus-operator-crds" / "v0.93.0" / "monitoring.coreos.com_podmonitors.yaml"
ON = {"scrape": "podMonitor", "dashboards": True, "grafanaHost": "http://grafana.monitoring.svc:80",
      "grafanaIframeHost": "http://127.0.0.1:3000",
      "prometheusHost": "http://prometheus-kube-prometheus-prometheus.monitoring.svc:9090"}


def monitored(stack: str, monitoring: dict, tmp_path: Path) -> list[dict]:
    """The documents of `stack` with this monitoring section."""
    (tmp_path / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump(
        with_values(stack, lambda values: values.__setitem__("monitoring", monitoring))))
    (tmp_path / "Pulumi.kuberay.yaml").write_text((REPO_ROOT / "Pulumi.kuberay.yaml").read_text())
    return documents(render(stack, tmp_path / "out", root=tmp_path))


def pod_templates(docs: list[dict]) -> dict[str, dict]:
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    cluster = service["spec"]["rayClusterConfig"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    templates.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return templates


@pytest.fixture(scope="module")
def pod_monitor_schema() -> jsonschema.Validator:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["metadata"]["name"] == POD_MONITOR_CRD
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


@pytest.mark.parametrize("stack", STACKS)
def test_off_in_the_shipped_stacks(stack):
    options = load_stack(stack).monitoring
    assert options.scrape == "none" and not options.dashboards and options.grafana_host is None


def test_the_pod_monitor_validates_and_selects_every_ray_pods_metrics_port(tmp_path, pod_monitor_schema):
    docs = monitored("gpu", ON, tmp_path)
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    pod_monitor_schema.validate(monitor)
    assert monitor["metadata"]["labels"]["release"] == "prometheus"  # kube-prometheus-stack's default selector
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["llm-serving"]}
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    for group, template in pod_templates(docs).items():
        assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items(), group
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports[endpoint["port"]] == 8080, group
        assert "annotations" not in template["metadata"], "no scrape annotations beside the PodMonitor"


def test_the_crd_schema_check_catches_a_wrong_pod_monitor(tmp_path, pod_monitor_schema):
    (monitor,) = [d for d in monitored("gpu", ON, tmp_path) if d["kind"] == "PodMonitor"]
    monitor["spec"]["podMetricsEndpoints"][0]["portName"] = "metrics"
    with pytest.raises(jsonschema.ValidationError):
        pod_monitor_schema.validate(monitor)


def test_preview_reads_the_pod_monitor_crd():
    config = to_pulumi_config(with_values("gpu", lambda values: values.__setitem__("monitoring", ON)))
    config.update(SECRETS)
    mocks = RecordingMocks(root=REPO_ROOT)
    run_with_mocks(main, mocks, "gpu", config, list(SECRETS))
    reads = [r for r in mocks.reads if r.type == "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"]
    assert [r.inputs["id"] for r in reads] == [POD_MONITOR_CRD]


@pytest.mark.parametrize("stack, gpu_row", [("gpu", True), ("cpu", False)])
def test_dashboards_are_config_maps_for_grafanas_sidecar(tmp_path, stack, gpu_row):
    docs = monitored(stack, {"dashboards": True}, tmp_path)
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert [m["metadata"]["labels"]["grafana_dashboard"] for m in maps] == ["1"]
    assert not [d for d in docs if d["kind"] == "PodMonitor"]
    for document in maps:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    dashboard = json.loads(maps[0]["data"]["serving.json"])
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert ("GPU (DCGM exporter)" in rows) is gpu_row
    shipped = json.loads((REPO_ROOT / "infra" / "dashboards" / "serving.json").read_text())
    if gpu_row:
        assert dashboard == shipped
    else:  # the GPU row and its panels go, nothing else
        gpu = {panel["id"] for row, panel in panels(shipped) if row == GPU_ROW}
        gpu |= {p["id"] for p in shipped["panels"] if p["type"] == "row" and p["title"] == GPU_ROW}
        assert [p["id"] for p in dashboard["panels"]] == [p["id"] for p in shipped["panels"] if p["id"] not in gpu]


def test_the_ray_dashboards_grafana_settings_are_on_the_head_only(tmp_path):
    templates = pod_templates(monitored("gpu", ON, tmp_path))
    envs = {group: {e["name"]: e.get("value") for e in t["spec"]["containers"][0]["env"]}
            for group, t in templates.items()}
    assert envs["head"]["RAY_GRAFANA_HOST"] == ON["grafanaHost"]
    assert envs["head"]["RAY_GRAFANA_IFRAME_HOST"] == ON["grafanaIframeHost"]
    assert envs["head"]["RAY_PROMETHEUS_HOST"] == ON["prometheusHost"]
    for group, env in envs.items():
        if group != "head":
            assert not {name for name in env if name.startswith(("RAY_GRAFANA", "RAY_PROMETHEUS"))}, group


def test_scrape_annotations_instead_of_a_pod_monitor(tmp_path):
    docs = monitored("cpu", {"scrape": "annotations"}, tmp_path)
    assert not [d for d in docs if d["kind"] in ("PodMonitor", "ConfigMap")]
    for group, template in pod_templates(docs).items():
        assert template["metadata"]["annotations"] == {
            "prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}, group


@pytest.mark.parametrize("monitoring, message", [
    ({"scrape": "serviceMonitor"}, "monitoring.scrape"),
    ({"podMonitorLabels": {"bad key!": "x"}}, "not a Kubernetes label key"),
    ({"dashboardLabels": {"grafana_dashboard": "no spaces"}}, "not a Kubernetes label value"),
    ({"grafanaHost": "grafana:3000"}, "monitoring.grafanaHost"),
    ({"grafanaIframeHost": "http://127.0.0.1:3000"}, "grafanaIframeHost: needs grafanaHost"),
    ({"scrapeInterval": "15"}, "monitoring.scrapeInterval"),
])
def test_mistakes_in_the_section_name_their_key(monitoring, message):
    assert message in config_error("gpu", lambda values: values.__setitem__("monitoring", monitoring))


def test_preview_refuses_a_setting_given_twice_and_gpu_panels_without_gpus():
    def both(values):
        values["monitoring"] = {"grafanaHost": "http://grafana:3000"}
        values["headGroup"].setdefault("env", {})["RAY_GRAFANA_HOST"] = "http://other:3000"

    assert "headGroup.env.RAY_GRAFANA_HOST: set by monitoring.grafanaHost" in problems_of("gpu", both)
    assert "monitoring.gpuPanels: true, but no NVIDIA node group deploys" in problems_of(
        "cpu", lambda values: values.__setitem__("monitoring", {"dashboards": True, "gpuPanels": True}))



@pytest.mark.parametrize("stack", STACKS)
def test_the_stack_files_commented_example_is_valid(stack, tmp_path, pod_monitor_schema):
    lines = (REPO_ROOT / f"Pulumi.{stack}.yaml").read_text().splitlines()
    start = lines.index("  # llm-serving:monitoring:")
    block = []
    for line in lines[start + 1:]:
        if not line.startswith("  #   "):
            break
        block.append(line.replace("  #", "", 1))
    example = yaml.safe_load("\n".join(block))
    assert example["scrape"] == "podMonitor" and example["dashboards"] is True
    (monitor,) = [d for d in monitored(stack, example, tmp_path) if d["kind"] == "PodMonitor"]
    pod_monitor_schema.validate(monitor)
