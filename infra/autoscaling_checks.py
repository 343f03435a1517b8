"""Preview-time checks of the replica and node ranges (infra.checks runs them): the applications at their fewest
replicas fit the node groups at their fewest pods (the cluster an idle service shrinks to; the check at the most is
infra.checks.check_placement's), and each group's nodes are the shape of what lands on them, so the autoscaler
adds a node only where a replica can use it. Every refusal gives the numbers."""

from __future__ import annotations

from .checks import _fmt, shortfall
from .config import StackConfig
from .stack_sections import NodeGroup


def _group_minimums(stack: StackConfig) -> list[tuple[str, NodeGroup, int]]:
    groups: list[tuple[str, NodeGroup, int]] = [("head", stack.head_group, 1)]
    return groups + [(g.name, g, g.size_range[0]) for g in stack.worker_groups if g.enabled]


def _total(groups: list[tuple[str, NodeGroup, int]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for _, group, count in groups:
        for name, amount in group.ray_capacity().items():
            total[name] = total.get(name, 0.0) + amount * count
    return total


def check_minimum_fit(stack: StackConfig) -> list[str]:
    needed: dict[str, float] = {}
    counts = []
    for app in stack.serve.applications:
        for deployment in app.deployments():
            fewest = deployment.replica_range[0]
            for name, amount in deployment.demand.items():
                needed[name] = needed.get(name, 0.0) + amount * fewest
            counts.append(f"{app.name}{'' if app.multi_model is None else '.' + deployment.where}: {fewest}")
    capacity = _total(_group_minimums(stack))
    over = shortfall(needed, capacity)
    if not over:
        return []
    counts = ", ".join(counts)
    sizes = ", ".join(f"{name}: {count}" for name, _, count in _group_minimums(stack))
    return [f"serve.applications: at their minimum replicas ({counts}) the applications need {_fmt(needed)}, but the "
            f"node groups at their minReplicas ({sizes}) have {_fmt(capacity)} (short {_fmt(over)}): raise a "
            f"group's minReplicas or lower min_replicas"]


def _landing(stack: StackConfig, group: NodeGroup) -> list[tuple[str, dict[str, float]]]:
    """(app name, one replica's demand) of the applications whose replica fits one node of `group`."""
    capacity = group.ray_capacity()
    return [(app.name, deployment.demand) for app in stack.serve.applications for deployment in app.deployments()
            if not shortfall(deployment.demand, capacity)]


def check_group_shapes(stack: StackConfig) -> list[str]:
    problems = []
    groups = [("headGroup", stack.head_group, False)]
    groups += [(f"workerGroups[{index}] ({group.name})", group, group.autoscales)
               for index, group in enumerate(stack.worker_groups) if group.enabled]
    for where, group, autoscales in groups:
        if group.ray_cpus is not None and group.ray_cpus > group.cpu:
            # Ray and its autoscaler plan with rayStartParams; Kubernetes gives the pod only what it requests.
            problems.append(f"{where}: rayCpus {group.ray_cpus:g} is more than the {group.cpu} CPUs its pods reserve, "
                            f"so replicas would be placed on CPUs the pod does not have")
        landing = _landing(stack, group)
        if autoscales and not landing:
            low, high = group.size_range
            problems.append(f"{where}: scales between {low} and {high} pods, but no application's replica fits one "
                            f"of its nodes ({_fmt(group.ray_capacity())}), so the autoscaler never adds one")
        gpu_demands = sorted({demand.get("GPU", 0.0) for _, demand in landing})
        if group.gpus and landing and not any(d and group.gpus % d == 0 for d in gpu_demands):
            names = ", ".join(f"{name} ({demand.get('GPU', 0.0):g})" for name, demand in landing)
            problems.append(f"{where}: each node has {group.gpus} GPUs, but the replicas that land on it reserve "
                            f"GPUs per replica {names}, so some of every node's GPUs would stay idle; size the "
                            f"group's gpus as a multiple of a replica's")
    return problems


def check_autoscaling(stack: StackConfig) -> list[str]:
    return check_minimum_fit(stack) + check_group_shapes(stack)
