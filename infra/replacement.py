"""Which changes replace the RayService, decided against what the stack's last `pulumi up` deployed (infra/previous.py),
as plain data (no Pulumi import).

KubeRay 1.7 with upgradeStrategy None applies a serveConfigV2 change and worker groups appended at the end to the
running cluster, ignores every other rayClusterConfig change, and leaves group sizes to the autoscaler
(infra/autoscaler.py): Pulumi replaces the RayService for what KubeRay ignores. Field changes are caught by
replace_on_changes paths; which groups exist is the worker-groups annotation, which stays the same while groups are
only appended (layout) and changes otherwise. Preview also says in words which parts changed (changes).

A RayService KubeRay gave up on (its initializing timeout: terminal in 1.7, clusters deleted, later changes ignored)
is replaced by the next `up` through replacement_trigger (recovery).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .autoscaler import AUTOSCALER_OWNED

FIRST = "first"  # the recovery trigger of a RayService no timeout has replaced yet (never null: see recovery)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprints(cluster: dict[str, Any]) -> dict[str, Any]:
    """rayClusterConfig by part: one digest per top-level field, and per worker group (by name, in order) one per
    field; the autoscaler's group sizes left out."""
    parts = {key: _digest(value) for key, value in cluster.items() if key != "workerGroupSpecs"}
    groups = [{"name": group["groupName"],
               "fields": {key: _digest(value) for key, value in group.items() if key not in AUTOSCALER_OWNED}}
              for group in cluster.get("workerGroupSpecs", [])]
    return {"parts": parts, "groups": groups}


def layout(previous: dict[str, Any], groups: list[str]) -> tuple[str, int]:
    """The worker-groups annotation and its generation: unchanged while groups are only appended, new otherwise. A
    stack deployed before this was recorded keeps the plain list of names it already carries."""
    names = ",".join(groups)
    before = previous.get("workerGroups")
    if before is None:
        return names, 1
    generation = int(previous["layoutGeneration"])  # stack outputs carry numbers as floats
    if groups[:len(before)] == before:
        return previous["layout"], generation
    generation += 1
    return f"{names} (layout {generation})", generation


def changes(previous: dict[str, Any], now: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(parts whose change replaces the RayService, worker groups appended in place), in stack-file words."""
    before = previous.get("fingerprints")
    if not before:
        return [], []
    replaced = [f"rayClusterConfig.{key}" for key in sorted(set(before["parts"]) | set(now["parts"]))
                if before["parts"].get(key) != now["parts"].get(key)]
    old_groups, new_groups = before["groups"], now["groups"]
    if [g["name"] for g in new_groups[:len(old_groups)]] != [g["name"] for g in old_groups]:
        replaced.append(f"workerGroups: {[g['name'] for g in old_groups]} -> {[g['name'] for g in new_groups]} "
                        "(only groups added at the end join the running cluster)")
        return replaced, []
    for old, new in zip(old_groups, new_groups):
        fields = sorted(k for k in set(old["fields"]) | set(new["fields"]) if old["fields"].get(k) != new["fields"].get(k))
        replaced += [f"workerGroups[{new['name']}].{field}" for field in fields]
    return replaced, [g["name"] for g in new_groups[len(old_groups):]]


def recovery(previous: dict[str, Any]) -> str:
    """The replacement trigger: the previous one, or a new one after KubeRay gave up on the RayService. Never null:
    Pulumi does not replace when the old trigger is null."""
    trigger = previous.get("trigger", FIRST)
    if previous.get("timedOut"):
        return f"replaces {previous.get('uid')}"
    return trigger
