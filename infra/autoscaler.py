"""Node autoscaling in the RayService, as plain data: KubeRay's in-tree autoscaler and each worker group's size
range, and which changes of `rayClusterConfig` replace the RayService (no Pulumi import).

KubeRay 1.7 treats a worker group's `replicas`, `minReplicas` and `maxReplicas` as the autoscaler's: they are left
out of the hash that decides whether a RayService's cluster is updated or replaced, so a change to them alone never
reaches a running cluster. The program therefore replaces the RayService on any other `rayClusterConfig` change,
but not on these: such a change updates the RayService object in place (the next cluster it creates uses it), and
`kubectl patch` applies it to the running cluster (README, "Autoscaling"). The live cluster's sizes are the
autoscaler's, which Pulumi never reads, so `pulumi up` does not fight it.
"""

from __future__ import annotations

from typing import Any

from .config import StackConfig
from .stack_sections import WorkerGroup

# The autoscaler's fields of a worker group (KubeRay's GenerateHashWithoutReplicasAndWorkersToDelete leaves them out).
AUTOSCALER_OWNED = ("replicas", "minReplicas", "maxReplicas")

# Every field of `rayClusterConfig` and of one `workerGroupSpecs` entry in the KubeRay 1.7.0 RayService CRD
# (tests/test_infra_autoscaling.py compares them with the CRD), so a field this program starts to set later is covered too.
RAY_CLUSTER_FIELDS = (
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
    "headServiceAnnotations", "historyServerOptions", "managedBy", "networkPolicy", "rayVersion", "suspend",
    "tlsOptions", "upgradeStrategy", "workerGroupSpecs",
)
WORKER_GROUP_FIELDS = (
    "groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas", "numOfHosts", "priority",
    "rayStartParams", "replicas", "resources", "scaleStrategy", "suspend", "template",
)
# Which worker groups exist, in order: replacing on it catches a group removed from the end, which a field-wise
# path under workerGroupSpecs[*] does not (the diff names the whole element).
WORKER_GROUPS_ANNOTATION = "llm-serving/worker-groups"


def replace_on_changes() -> list[str]:
    """Property paths whose change replaces the RayService: every rayClusterConfig field but the autoscaler's."""
    paths = [f"spec.rayClusterConfig.{name}" for name in RAY_CLUSTER_FIELDS if name != "workerGroupSpecs"]
    paths += [f"spec.rayClusterConfig.workerGroupSpecs[*].{name}" for name in WORKER_GROUP_FIELDS
              if name not in AUTOSCALER_OWNED]
    paths.append(f'metadata.annotations["{WORKER_GROUPS_ANNOTATION}"]')
    return paths


def worker_groups_annotation(stack: StackConfig) -> dict[str, str]:
    return {WORKER_GROUPS_ANNOTATION: ",".join(group.name for group in stack.worker_groups if group.enabled)}


def node_autoscaling(stack: StackConfig) -> bool:
    return any(group.autoscales for group in stack.worker_groups)


def group_sizes(group: WorkerGroup) -> dict[str, int]:
    low, high = group.size_range
    return {"replicas": group.replicas, "minReplicas": low, "maxReplicas": high}


def autoscaler_fields(stack: StackConfig) -> dict[str, Any]:
    """`enableInTreeAutoscaling` and `autoscalerOptions` of rayClusterConfig; empty where every group is fixed."""
    if not node_autoscaling(stack):
        return {}
    options = stack.autoscaler
    resources = {"cpu": options.cpu, "memory": options.memory}
    autoscaler: dict[str, Any] = {
        "upscalingMode": options.upscaling_mode,
        "idleTimeoutSeconds": options.idle_timeout_seconds,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    if options.version is not None:
        autoscaler["version"] = options.version
    return {"enableInTreeAutoscaling": True, "autoscalerOptions": autoscaler}
