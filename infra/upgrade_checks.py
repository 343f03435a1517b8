"""Preview-time checks of rayService.upgradeStrategy (infra.checks runs them): what KubeRay 1.7 would refuse or do
nothing with, refused here with the reason."""

from __future__ import annotations

from .autoscaler import node_autoscaling
from .config import StackConfig


def check_upgrade_strategy(stack: StackConfig) -> list[str]:
    upgrade = stack.ray_service.upgrade_strategy
    if upgrade.type != "NewClusterWithIncrementalUpgrade" or node_autoscaling(stack):
        return []
    # KubeRay's ValidateClusterUpgradeOptions; the RayService would sit with Ready=False / ValidationFailed.
    return ["rayService.upgradeStrategy: NewClusterWithIncrementalUpgrade needs KubeRay's autoscaler, which this "
            "stack does not run (KubeRay 1.7 refuses it: \"Ray Autoscaler is required for "
            "NewClusterWithIncrementalUpgrade\"): give a worker group minReplicas below maxReplicas, or use NewCluster "
            "or None. It also needs Gateway API and a controller for gatewayClassName "
            f"{upgrade.cluster_upgrade_options.gateway_class_name!r} (preview reads that GatewayClass)"]
