"""The KubeRay operator from its Helm chart, pinned: the RayService is written against this version's CRD."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi
import pulumi_kubernetes as k8s

from .config import KUBERAY_CHART, KUBERAY_CHART_VERSION, KUBERAY_REPO


@dataclass
class KubeRayOperatorArgs:
    namespace: str
    values: dict[str, Any] = field(default_factory=dict)


class KubeRayOperator(pulumi.ComponentResource):
    release: k8s.helm.v3.Release

    def __init__(self, name: str, args: KubeRayOperatorArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-serving:index:KubeRayOperator", name, None, opts)
        self.release = k8s.helm.v3.Release(
            name,
            name=KUBERAY_CHART,
            chart=KUBERAY_CHART,
            version=KUBERAY_CHART_VERSION,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=KUBERAY_REPO),
            namespace=args.namespace,
            create_namespace=True,
            values=args.values,
            # Wait for the operator Deployment: a RayService created before it runs would sit unreconciled.
            skip_await=False,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"namespace": self.release.namespace, "version": self.release.version})
