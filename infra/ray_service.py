"""The RayService (ray.io/v1): the Ray cluster and its Serve applications, as the typed stack config says; what
`pulumi up` waits for (infra/rollout.py) and which changes replace it (infra/replacement.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import pulumi
import pulumi_kubernetes as k8s
from pulumi_kubernetes import _utilities as k8s_utilities

from serving_app.enums import TargetDevice

from . import replacement
from .autoscaler import WORKER_GROUPS_ANNOTATION, replace_on_changes
from .config import StackConfig
from .manifests import labels, ray_service_annotations, ray_service_spec
from .rollout import TIMEOUT_REASON, rollout_problems, serve_config_yaml, wait_for, with_config_marker
from .serve_config import serve_config
from .stack_sections import duration_seconds


def _minutes(duration: str) -> str:
    """Go-style 1h30m -> Pulumi's 90m."""
    return f"{max(1, round(duration_seconds(duration) / 60))}m"


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
    # The stack's last deployment (infra/previous.py); {} on the first run.
    previous: pulumi.Input[dict[str, Any]] = field(default_factory=dict)


class RayServiceObject(pulumi.CustomResource):
    """A RayService as k8s.apiextensions.CustomResource declares one, with the live `status` as an output too (the
    object the provider's await ended on, which CustomResource does not expose)."""

    metadata: pulumi.Output[Any]
    spec: pulumi.Output[Any]
    status: pulumi.Output[Any]

    def __init__(self, name: str, metadata: pulumi.Input[Any], spec: pulumi.Input[Any],
                 opts: pulumi.ResourceOptions):
        props = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": metadata, "spec": spec, "status": None}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(version=k8s_utilities.get_version()))
        super().__init__("kubernetes:ray.io/v1:RayService", name, props, opts)


def _warn_of_replacement(stack: StackConfig, previous: dict[str, Any], now: dict[str, Any],
                         resource: pulumi.Resource) -> None:
    replaced, appended = replacement.changes(previous, now)
    if appended:
        pulumi.log.info(f"worker groups {appended} are added to the running Ray cluster (no restart)", resource)
    if replaced and stack.ray_service.upgrade_strategy.type == "None":
        pulumi.log.warn(f"these changes replace the RayService {stack.ray_service.name} (upgradeStrategy None: KubeRay "
                        "would ignore them): every Ray pod restarts and the models reload, minutes without serving: "
                        + "; ".join(replaced), resource)


class LlmRayService(pulumi.ComponentResource):
    ray_service: RayServiceObject
    # What the next run compares with (infra/previous.py, under "rayService").
    facts: pulumi.Output[dict[str, Any]]

    def __init__(self, name: str, args: LlmRayServiceArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-serving:index:LlmRayService", name, None, opts)
        stack = args.stack
        config, marker = with_config_marker(serve_config(stack))
        spec = ray_service_spec(
            stack,
            images=args.images,
            serve_config_yaml=serve_config_yaml(config),
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

        previous = pulumi.Output.from_input(args.previous).apply(lambda p: p.get("rayService") or {})
        groups = [group["groupName"] for group in spec["rayClusterConfig"]["workerGroupSpecs"]]
        layout = previous.apply(lambda p: replacement.layout(p, groups))
        now = pulumi.Output.from_input(spec["rayClusterConfig"]).apply(replacement.fingerprints)
        pulumi.Output.all(previous, now).apply(lambda v: _warn_of_replacement(stack, v[0], v[1], self))
        annotations = {
            **ray_service_annotations(stack),
            WORKER_GROUPS_ANNOTATION: layout.apply(lambda v: v[0]),
            "pulumi.com/waitFor": wait_for(marker, len(config["applications"])),
        }
        self.ray_service = RayServiceObject(
            name,
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=stack.ray_service.name,
                namespace=args.namespace,
                labels=labels(stack, "ray-service"),
                annotations=annotations,
            ),
            spec=spec,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=depends,
                custom_timeouts=pulumi.CustomTimeouts(create=timeout, update=timeout, delete="30m"),
                # With upgradeStrategy None KubeRay ignores rayClusterConfig changes; replacing the object rolls
                # them out (with downtime, never with a second copy of the GPUs). Not on the autoscaler's own
                # fields (group sizes), which no KubeRay strategy rolls out (infra/autoscaler.py), nor on worker
                # groups appended at the end (the annotation's layout), which KubeRay adds in place.
                replace_on_changes=replace_on_changes() if upgrade == "None" else None,
                # After KubeRay gave up on it (initializing timeout), with any strategy.
                replacement_trigger=previous.apply(replacement.recovery),
                # One name: the old object goes first.
                delete_before_replace=True,
            ),
        )
        if not pulumi.runtime.is_dry_run():  # preview shows the old status
            initializing = stack.ray_service.initializing_timeout
            self.ray_service.status.apply(lambda status: self._fail_on(
                rollout_problems(status, marker, stack.ray_service.name, initializing)))
        self.facts = pulumi.Output.all(previous, layout, now, self.ray_service.metadata,
                                       self.ray_service.status).apply(lambda v: self._facts(*v))
        self.register_outputs({"name": stack.ray_service.name})

    @staticmethod
    def _fail_on(problems: list[str]) -> None:
        if problems:
            raise pulumi.RunError("\n".join(problems))

    @staticmethod
    def _facts(previous: dict[str, Any], layout: tuple[str, int], now: dict[str, Any], metadata: Optional[dict],
               status: Optional[dict]) -> dict[str, Any]:
        ready = next((c for c in (status or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
        return {
            "workerGroups": [group["name"] for group in now["groups"]],
            "layout": layout[0],
            "layoutGeneration": layout[1],
            "fingerprints": now,
            "trigger": replacement.recovery(previous),
            "uid": (metadata or {}).get("uid"),
            "timedOut": ready.get("reason") == TIMEOUT_REASON,
        }
