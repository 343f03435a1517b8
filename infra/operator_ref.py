"""A serving stack's KubeRay operator: the stack that installs it (kuberay.stack), read at preview. Its RayService
waits for the check that the operator stack is up, runs the chart version this program writes RayServices for, and
runs where this stack's NetworkPolicy lets it in."""

from __future__ import annotations

from typing import Any, Optional

import pulumi

from .config import KUBERAY_CHART_VERSION, StackConfig
from .kuberay import OUTPUT
from .previous import qualified


def operator_problem(stack: StackConfig, facts: Optional[dict[str, Any]]) -> Optional[str]:
    name = stack.kuberay.stack
    if not facts:
        return (f"kuberay.stack: stack {name!r} has not installed the KubeRay operator (no {OUTPUT!r} output): "
                f"pulumi up --stack {name} first, once per cluster (Pulumi.{name}.yaml)")
    if facts.get("version") != KUBERAY_CHART_VERSION:
        return (f"kuberay.stack: stack {name!r} runs KubeRay {facts.get('version')}, this program writes RayServices "
                f"for {KUBERAY_CHART_VERSION}: pulumi up --stack {name} from this checkout first (chart and CRDs)")
    if facts.get("namespace") != stack.kuberay.namespace:
        return (f"kuberay.namespace: {stack.kuberay.namespace}, but stack {name!r} runs the operator in "
                f"{facts.get('namespace')}")
    return None


def _checked(stack: StackConfig, ref: pulumi.StackReference, facts: Optional[dict[str, Any]]) -> pulumi.Resource:
    problem = operator_problem(stack, facts)
    if problem is not None:
        raise pulumi.RunError(problem)
    return ref


def operator_dependency(stack: StackConfig) -> Optional[pulumi.Output[pulumi.Resource]]:
    """What the RayService depends on: the operator stack, once checked; None where it is installed outside Pulumi."""
    if stack.kuberay.stack is None:
        return None
    ref = pulumi.StackReference(qualified(stack.kuberay.stack))
    return ref.get_output(OUTPUT).apply(lambda facts: _checked(stack, ref, facts))
