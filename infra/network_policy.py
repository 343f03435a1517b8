"""A NetworkPolicy around the Ray pods (stack option `networkPolicy`, on by default): the cluster's own pods reach
each other on every port (GCS, raylets, object transfer, Serve's HAProxy to the replicas), the KubeRay operator
reaches what it calls (dashboard, dashboard agent, serve port), the serve port is open to `serveFrom` (anyone by
default: the API's keys guard it) and the metrics port to `metricsFrom`. Nothing else reaches the head's GCS,
client server or Jobs API, which run code for whoever calls them. Egress stays open (model downloads).

Kubelet probes are not subject to NetworkPolicy, so KubeRay's health probes keep working.
"""

from __future__ import annotations

from typing import Any, Optional

import pulumi
import pulumi_kubernetes as k8s

from .config import StackConfig
from .manifests import RAY_PORTS, labels


def _ports(*numbers: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": number} for number in numbers]


def network_policy_spec(stack: StackConfig) -> dict[str, Any]:
    options = stack.network_policy
    # Our two labels on the pod template (KubeRay 1.7 keeps them; its own app.kubernetes.io/name may differ).
    ours = labels(stack, "ray-node")
    ray_pods = {"matchLabels": {key: ours[key] for key in ("app.kubernetes.io/instance", "app.kubernetes.io/component")}}
    serve_rule: dict[str, Any] = {"ports": _ports(stack.serve.port)}
    if options.serve_from:
        serve_rule["from"] = list(options.serve_from)
    ingress = [
        {"from": [{"podSelector": ray_pods}]},
        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": stack.kuberay.namespace}}}],
         "ports": _ports(RAY_PORTS["dashboard"], RAY_PORTS["dashboard-agent"], stack.serve.port)},
        serve_rule,
        {"from": list(options.metrics_from), "ports": _ports(RAY_PORTS["metrics"])},
    ]
    if stack.dashboard.service_type != "ClusterIP":  # exposed on purpose (and refused without token auth)
        ingress.append({"ports": _ports(RAY_PORTS["dashboard"])})
    return {"podSelector": ray_pods, "policyTypes": ["Ingress"], "ingress": ingress}


class RayNetworkPolicy(pulumi.ComponentResource):
    def __init__(self, name: str, stack: StackConfig, namespace: pulumi.Input[str],
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-serving:index:RayNetworkPolicy", name, None, opts)
        self.policy = k8s.networking.v1.NetworkPolicy(
            name,
            metadata=k8s.meta.v1.ObjectMetaArgs(name=f"{stack.ray_service.name}-ray", namespace=namespace,
                                                labels=labels(stack, "network-policy")),
            spec=network_policy_spec(stack),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"name": f"{stack.ray_service.name}-ray"})
