"""The cluster's KubeRay operator, from its Helm chart, pinned: the RayServices are written against this version's
CRDs. Installed by a stack of its own (Pulumi.kuberay.yaml), once per cluster; the serving stacks name that stack
(infra/operator_ref.py).

The chart is rendered by Pulumi (helm.v4.Chart), not installed as a Helm release: Helm installs a chart's CRDs once
and never upgrades them, so a chart bump would leave the old CRDs behind; here the CRDs are resources like the rest
and change with the chart. They are server-side applied: the RayService CRD is larger (305 kB as JSON) than the
262,144-byte annotation that a client-side apply writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi
import pulumi_kubernetes as k8s

from .config import KUBERAY_CHART, KUBERAY_CHART_VERSION, KUBERAY_REPO

OUTPUT = "kuberay"  # the stack output the serving stacks read


def operator_facts(namespace: str) -> dict[str, str]:
    """What the operator stack exports and its serving stacks check."""
    return {"chart": KUBERAY_CHART, "version": KUBERAY_CHART_VERSION, "namespace": namespace}


def require_server_side_apply() -> None:
    if pulumi.Config("kubernetes").get_bool("enableServerSideApply") is False:
        raise pulumi.RunError(
            "kubernetes:enableServerSideApply is false, but the KubeRay CRDs are larger than a client-side apply "
            "can write (its last-applied annotation holds at most 262144 bytes): "
            "pulumi config rm kubernetes:enableServerSideApply")


@dataclass
class KubeRayOperatorArgs:
    namespace: str
    values: dict[str, Any] = field(default_factory=dict)


class KubeRayOperator(pulumi.ComponentResource):
    chart: k8s.helm.v4.Chart

    def __init__(self, name: str, args: KubeRayOperatorArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-serving:index:KubeRayOperator", name, None, opts)
        # Destroying the operator deletes its CRDs and with them every RayService in the cluster, of every serving
        # stack: `pulumi destroy` refuses until `pulumi state unprotect` says that is meant.
        protected = pulumi.ResourceOptions(parent=self, protect=True)
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-namespace", metadata=k8s.meta.v1.ObjectMetaArgs(name=args.namespace), opts=protected)
        self.chart = k8s.helm.v4.Chart(
            name,
            name=KUBERAY_CHART,
            chart=KUBERAY_CHART,
            version=KUBERAY_CHART_VERSION,
            repository_opts=k8s.helm.v4.RepositoryOptsArgs(repo=KUBERAY_REPO),
            namespace=self.namespace.metadata.name,
            values=args.values,
            # Its CRDs too (the chart's crds/), upgraded with the chart.
            skip_crds=False,
            opts=protected,
        )
        self.register_outputs({"namespace": args.namespace, "version": KUBERAY_CHART_VERSION})
