"""What the stack option `monitoring` adds, as plain data (no Pulumi import): how the cluster's Prometheus finds the
Ray pods' metrics port (a Prometheus operator PodMonitor here; the `prometheus.io/*` scrape annotations and the Ray
dashboard's Grafana/Prometheus settings on the head are part of the pod templates, infra/manifests.py), and Grafana
dashboards as ConfigMaps for Grafana's dashboard sidecar. Every pod's metrics port (8080) serves Ray's metrics and the serving metrics of
serving_app/metrics.py.

A PodMonitor, not a ServiceMonitor: a RayService keeps two Services in front of its head during upgrades, and a
ServiceMonitor would scrape that head twice. Its relabelings carry KubeRay's `ray_io_cluster` (the Ray dashboard's
and KubeRay's dashboards filter by it) and the pod's node group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.alias_generators import to_camel

from serving_app.enums import TargetDevice

from .config import StackConfig
from .manifests import MONITORING_HEAD_ENV, labels, monitoring_env, ray_pod_selector

DASHBOARD_DIR = Path(__file__).parent / "dashboards"
GPU_ROW = "GPU (DCGM exporter)"
CONFIG_MAP_LIMIT = 1024 * 1024  # bytes of data one ConfigMap may hold (etcd's object limit)


def gpu_panels(stack: StackConfig) -> bool:
    """The dashboard's DCGM row: as the stack says, else where an NVIDIA node group deploys (DCGM is NVIDIA's)."""
    if stack.monitoring.gpu_panels is not None:
        return stack.monitoring.gpu_panels
    return TargetDevice.NVIDIA in stack.needed_hardware()


def dashboard(name: str, with_gpu_row: bool) -> dict[str, Any]:
    """A shipped dashboard (infra/dashboards/<name>.json), without its GPU row where the cluster has no GPUs."""
    body = json.loads((DASHBOARD_DIR / f"{name}.json").read_text())
    if with_gpu_row:
        return body
    kept, in_gpu_row = [], False
    for panel in body["panels"]:
        if panel["type"] == "row":
            in_gpu_row = panel["title"] == GPU_ROW
        if not in_gpu_row:
            kept.append(panel)
    return {**body, "panels": kept}


def dashboards(stack: StackConfig) -> dict[str, str]:
    """File name -> JSON text of every shipped dashboard, as this stack provisions them."""
    return {f"{path.stem}.json": json.dumps(dashboard(path.stem, gpu_panels(stack)), indent=1)
            for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def dashboard_config_maps(stack: StackConfig) -> list[dict[str, Any]]:
    """One ConfigMap per dashboard (a single one outgrows the object limit as dashboards are added), labelled for
    Grafana's sidecar, which by default searches every namespace."""
    options = stack.monitoring
    namespace = options.dashboards_namespace or stack.namespace
    return [{"metadata": {"name": f"{stack.ray_service.name}-dashboard-{file_name.removesuffix('.json')}",
                          "namespace": namespace,
                          "labels": {**labels(stack, "dashboard"), **options.dashboard_labels}},
             "data": {file_name: text}}
            for file_name, text in dashboards(stack).items()]


def pod_monitor(stack: StackConfig) -> dict[str, Any]:
    """The PodMonitor of every Ray pod's metrics port (the `metrics` container port of infra/manifests.py)."""
    options = stack.monitoring
    endpoint = {
        "port": "metrics",
        "path": "/metrics",
        "interval": options.scrape_interval,
        "relabelings": [
            {"sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"], "targetLabel": "ray_io_cluster"},
            {"sourceLabels": ["__meta_kubernetes_pod_label_llm_serving_node_group"], "targetLabel": "node_group"},
        ],
    }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": f"{stack.ray_service.name}-ray", "namespace": stack.namespace,
                     "labels": {**labels(stack, "pod-monitor"), **options.pod_monitor_labels}},
        "spec": {
            "selector": ray_pod_selector(stack),
            "namespaceSelector": {"matchNames": [stack.namespace]},
            "podMetricsEndpoints": [endpoint],
        },
    }


def check_monitoring(stack: StackConfig) -> list[str]:
    """Preview-time problems of the monitoring section."""
    options, problems = stack.monitoring, []
    for name in monitoring_env(stack):
        if name in stack.head_group.env:
            problems.append(f"headGroup.env.{name}: set by monitoring.{to_camel(MONITORING_HEAD_ENV[name])}; give it in one "
                            "place")
    if options.dashboards:
        for map_ in dashboard_config_maps(stack):
            size = sum(len(text.encode()) for text in map_["data"].values())
            if size > CONFIG_MAP_LIMIT:
                problems.append(f"monitoring.dashboards: {map_['metadata']['name']} holds {size} bytes, more than a "
                                f"ConfigMap may ({CONFIG_MAP_LIMIT})")
    if options.gpu_panels and TargetDevice.NVIDIA not in stack.needed_hardware():
        problems.append("monitoring.gpuPanels: true, but no NVIDIA node group deploys: the DCGM exporter would "
                        "have no GPU to report (leave it unset: on where an NVIDIA group deploys)")
    return problems

