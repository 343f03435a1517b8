"""The RayService (ray.io/v1): the Ray cluster and its Serve applications, as the typed stack config says."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import pulumi
import pulumi_kubernetes as k8s
import yaml

from serving_app.serve_args import TargetDevice

from .autoscaler import replace_on_changes
from .config import StackConfig
from .manifests import labels, ray_service_annotations, ray_service_spec
from .serve_config import serve_config


def _minutes(duration: str) -> str:
    """Go-style 1h30m -> Pulumi's 90m."""
    units = {"h": 60, "m": 1, "s": 1 / 60}
    total = sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", duration))
    return f"{max(1, round(total))}m"


@dataclass
class LlmRayServiceArgs:
    stack: StackConfig
    namespace: pulumi.Input[str]
    images: Mapping[TargetDevice, pulumi.Input[str]]
    hf_secret_name: Optional[str] = None
    pull_secret_name: Optional[str] = None
    model_claim_name: Optional[str] = None
    api_keys_secret_name: Optional[str] = None
    # The operator, the Secrets and the claim: pods created before them would fail or never be reconciled.
    depends_on: Sequence[pulumi.Input[pulumi.Resource]] = ()


class LlmRayService(pulumi.ComponentResource):
    ray_service: k8s.apiextensions.CustomResource

    def __init__(self, name: str, args: LlmRayServiceArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-serving:index:LlmRayService", name, None, opts)
        stack = args.stack
        spec = ray_service_spec(
            stack,
            images=args.images,
            serve_config_yaml=yaml.safe_dump(serve_config(stack), sort_keys=False),
            hf_secret_name=args.hf_secret_name,
            pull_secret_name=args.pull_secret_name,
            model_claim_name=args.model_claim_name,
            api_keys_secret_name=args.api_keys_secret_name,
        )
        timeout = _minutes(stack.ray_service.pulumi_timeout)
        upgrade = stack.ray_service.upgrade_strategy.type
        depends = list(args.depends_on)
        options = stack.ray_service.upgrade_strategy.cluster_upgrade_options
        if options is not None:
            # KubeRay's incremental upgrade routes traffic through a Gateway of this class; it does not check that
            # Gateway API is there. Reading the GatewayClass fails the preview where it is not.
            pulumi.log.info(f"NewClusterWithIncrementalUpgrade: reading GatewayClass {options.gateway_class_name!r} "
                            "(Gateway API and its controller must be installed)", resource=self)
            depends.append(k8s.apiextensions.CustomResource.get(
                f"{name}-gateway-class", api_version="gateway.networking.k8s.io/v1", kind="GatewayClass",
                id=options.gateway_class_name, opts=pulumi.ResourceOptions(parent=self)))
        self.ray_service = k8s.apiextensions.CustomResource(
            name,
            api_version="ray.io/v1",
            kind="RayService",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=stack.ray_service.name,
                namespace=args.namespace,
                labels=labels(stack, "ray-service"),
                annotations=ray_service_annotations(stack),
            ),
            spec=spec,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=depends,
                custom_timeouts=pulumi.CustomTimeouts(create=timeout, update=timeout, delete="30m"),
                # With upgradeStrategy None KubeRay ignores rayClusterConfig changes; replacing the object rolls
                # them out (with downtime, never with a second copy of the GPUs). Not on the autoscaler's own
                # fields (group sizes), which no KubeRay strategy rolls out (infra/autoscaler.py).
                replace_on_changes=replace_on_changes() if upgrade == "None" else None,
                delete_before_replace=upgrade == "None",
            ),
        )
        self.register_outputs({"name": stack.ray_service.name})
