"""Checks run at `pulumi preview` (and render), before anything is created: a config that can never serve fails
here with the app, the demand and the node group named, instead of as a pod pending for ever."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from serving_app.engines.registry import image_engine
from serving_app.serve_args import ServeArgs

from .config import REPO_ROOT, StackConfig
from .gpu_fit import check_gpu_fit, gpu_fit_warnings
from .image_checks import check_images
from .manifests import DIRECT_INGRESS_PORTS, RAY_PORTS
from .monitoring_spec import check_monitoring
from .stack_sections import MODELS_MOUNT, NodeGroup
from .upgrade_checks import check_upgrade_strategy


class StackCheckError(ValueError):
    """One or more preview-time checks failed; the message lists every problem."""


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


def shortfall(demand: dict[str, float], capacity: dict[str, float]) -> dict[str, float]:
    return {name: amount - capacity.get(name, 0.0) for name, amount in demand.items()
            if amount > capacity.get(name, 0.0) + 1e-9}


def _best_group(demand: dict[str, float], groups: list[tuple[str, NodeGroup, int]]) -> tuple[str, NodeGroup]:
    # Fewest missing resource kinds, then the smallest relative shortage.
    def score(item: tuple[str, NodeGroup, int]) -> tuple[int, float]:
        missing = shortfall(demand, item[1].ray_capacity())
        return len(missing), sum(gap / demand[name] for name, gap in missing.items())

    name, group, _ = min(groups, key=score)
    return name, group


def _placement_problems(where: str, demand: dict[str, float], args: Optional[ServeArgs],
                        groups: list[tuple[str, NodeGroup, int]]) -> list[str]:
    """One replica fits one node of some group, and (a model's) the groups it can land on run its engine."""
    fits = [(name, group) for name, group, count in groups if count and not shortfall(demand, group.ray_capacity())]
    if not fits:
        best_name, best = _best_group(demand, [g for g in groups if g[2]] or groups)
        return [f"{where}: one replica needs {_fmt(demand)} on a single node, which no node group offers; "
                f"best fit is '{best_name}' with {_fmt(best.ray_capacity())} "
                f"(short {_fmt(shortfall(demand, best.ray_capacity()))})"]
    if args is None:
        return []
    device = args.target_device.value
    wrong = [(name, group) for name, group in fits if group.hardware != args.target_device]
    if wrong:
        names = ", ".join(f"'{name}' ({group.hardware.value}, image engine {image_engine(group.hardware).value})"
                          for name, group in wrong)
        return [f"{where}: engine {args.engine.value} on {device} can land on {names}; give it a custom resource "
                f"that only {device} groups offer (args.resources, e.g. {{{device.lower()}_cpu: 1}}) or fix "
                f"target_device"]
    if image_engine(args.target_device) != args.engine:
        return [f"{where}: engine {args.engine.value} is not in the {device} image "
                f"(it carries {image_engine(args.target_device).value})"]
    return []


def check_placement(stack: StackConfig) -> list[str]:
    """Each replica fits one node of some group; all replicas together fit the cluster; the groups a replica can
    land on run its engine."""
    problems = []
    groups = stack.node_groups()
    totals: dict[str, float] = {}
    for _, group, count in groups:
        for name, amount in group.ray_capacity().items():
            totals[name] = totals.get(name, 0.0) + amount * count
    needed: dict[str, float] = {}
    for index, app in enumerate(stack.serve.applications):
        for deployment in app.deployments():
            for name, amount in deployment.demand.items():
                needed[name] = needed.get(name, 0.0) + amount * deployment.replica_range[1]
            problems += _placement_problems(app.describe(index, deployment.where), deployment.demand,
                                            deployment.args, groups)
    over = shortfall(needed, totals)
    if over:
        problems.append(
            f"serve.applications: all replicas together need {_fmt(needed)} but the cluster has {_fmt(totals)} "
            f"(short {_fmt(over)})"
        )
    return problems


def pack_warnings(stack: StackConfig) -> list[str]:
    """First-fit-decreasing over nodes: a hint (not an error) that the totals fit but the pieces may not."""
    nodes = [(name, dict(group.ray_capacity())) for name, group, count in stack.node_groups() for _ in range(count)]
    replicas = [(app.name, deployment.demand) for app in stack.serve.applications
                for deployment in app.deployments() for _ in range(deployment.replica_range[1])]
    replicas.sort(key=lambda item: (item[1].get("GPU", 0), item[1].get("CPU", 0)), reverse=True)
    unplaced = []
    for app_name, demand in replicas:
        for _, free in nodes:
            if not shortfall(demand, free):
                for name, amount in demand.items():
                    free[name] -= amount
                break
        else:
            unplaced.append(app_name)
    warnings = gpu_fit_warnings(stack)
    if unplaced:
        warnings.insert(0, f"replicas of {sorted(set(unplaced))} may stay pending: packing them onto nodes one by one "
                        f"leaves {len(unplaced)} without a node even though the cluster totals suffice")
    return warnings


def check_routes_and_ports(stack: StackConfig) -> list[str]:
    problems = []
    seen: dict[str, str] = {}
    names: set[str] = set()
    for index, app in enumerate(stack.serve.applications):
        prefix = app.route_prefix.rstrip("/") or "/"
        if prefix in seen:
            problems.append(f"serve.applications[{index}] ({app.name}): routePrefix {app.route_prefix} is already "
                            f"used by {seen[prefix]}")
        seen[prefix] = app.name
        if app.name in names:
            problems.append(f"serve.applications[{index}]: application name {app.name!r} is used twice")
        names.add(app.name)
    for name, port in RAY_PORTS.items():
        if stack.serve.port == port:
            problems.append(f"serve.port: {port} is Ray's {name} port")
    for name, ports in DIRECT_INGRESS_PORTS.items():
        if stack.serve.port in ports:
            problems.append(f"serve.port: {stack.serve.port} is in Serve's {name} range {ports.start}-{ports.stop - 1}")
    return problems


def check_model_storage(stack: StackConfig) -> list[str]:
    problems = []
    for index, app in enumerate(stack.serve.applications):
        for where, args in app.model_args():
            lora = args.lora
            paths = [("model_name", args.model_name)]
            paths += [(f"lora.adapters.{name}", path) for name, path in (lora.adapters.items() if lora else ())]
            paths += [("lora.dynamic_dir", lora.dynamic_dir)] if lora and lora.dynamic_dir else []
            for key, path in paths:
                if path.startswith(MODELS_MOUNT + "/") and stack.model_storage is None:
                    problems.append(f"serve.applications[{index}].{where}.{key}: {path} is on the model volume but "
                                    f"modelStorage is not configured")
    return problems


def run_checks(stack: StackConfig, root: Path = REPO_ROOT) -> list[str]:
    """All problems (empty when the stack can deploy)."""
    problems: list[str] = []
    for check in (check_routes_and_ports, check_placement, check_model_storage, check_gpu_fit):
        problems += check(stack)
    problems += check_images(stack, root)
    from .autoscaling_checks import check_autoscaling  # here: it builds on this module's helpers

    problems += check_autoscaling(stack)
    problems += check_upgrade_strategy(stack)
    problems += check_monitoring(stack)
    return problems


def raise_for_problems(problems: Iterable[str]) -> None:
    problems = list(problems)
    if problems:
        raise StackCheckError("stack checks failed:\n" + "\n".join(f"  - {p}" for p in problems))
