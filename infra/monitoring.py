"""The stack option `monitoring` as resources: the Ray pods' PodMonitor (scrape: podMonitor) and the dashboards'
ConfigMaps for Grafana's sidecar (dashboards: true). Their content: infra/monitoring_spec.py.

A PodMonitor needs the Prometheus operator's CRD: preview reads it, so a cluster without the operator fails there
with the CRD's name instead of at `pulumi up`.
"""

from __future__ import annotations

from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from .config import StackConfig
from .monitoring_spec import dashboard_config_maps, pod_monitor

POD_MONITOR_CRD = "podmonitors.monitoring.coreos.com"


class Monitoring(pulumi.ComponentResource):
    def __init__(self, name: str, stack: StackConfig, namespace: pulumi.Input[str],
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-serving:index:Monitoring", name, None, opts)
        options = stack.monitoring
        child = pulumi.ResourceOptions(parent=self)
        names: list[str] = []
        if options.scrape == "podMonitor":
            pulumi.log.info(f"monitoring.scrape podMonitor: reading CRD {POD_MONITOR_CRD} (the Prometheus operator "
                            "must be installed)", resource=self)
            crd = k8s.apiextensions.v1.CustomResourceDefinition.get(f"{name}-pod-monitor-crd", POD_MONITOR_CRD,
                                                                    opts=child)
            body = pod_monitor(stack)
            k8s.apiextensions.CustomResource(
                f"{name}-pod-monitor", api_version=body["apiVersion"], kind=body["kind"],
                metadata=k8s.meta.v1.ObjectMetaArgs(name=body["metadata"]["name"], namespace=namespace,
                                                    labels=body["metadata"]["labels"]),
                spec=body["spec"], opts=pulumi.ResourceOptions(parent=self, depends_on=[crd]))
            names.append(body["metadata"]["name"])
        if options.dashboards:
            for body in dashboard_config_maps(stack):
                metadata = body["metadata"]
                k8s.core.v1.ConfigMap(
                    metadata["name"],
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        name=metadata["name"], labels=metadata["labels"],
                        namespace=metadata["namespace"] if options.dashboards_namespace else namespace),
                    data=body["data"], opts=child)
                names.append(metadata["name"])
        self.register_outputs({"names": names})
