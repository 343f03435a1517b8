"""What this stack's last `pulumi up` deployed, for the next run to compare with (which changes replace the RayService,
whether KubeRay gave up on it, what storage change a claim cannot take): a stack output the program writes (OUTPUT)
and reads back at preview through a StackReference to its own stack. Empty on the first run.

Stack outputs are saved when the program has registered them, also when a later check fails the run; when the run
fails earlier (a resource error) the previous values stay, and every decision made from them is the same again."""

from __future__ import annotations

from typing import Any

import pulumi

OUTPUT = "lastDeployment"


def qualified(stack_name: str) -> str:
    """A stack name as StackReference takes it: organization/project/stack (a name with '/' is taken as given)."""
    if "/" in stack_name:
        return stack_name
    return f"{pulumi.get_organization()}/{pulumi.get_project()}/{stack_name}"


def previous_deployment() -> pulumi.Output[dict[str, Any]]:
    reference = pulumi.StackReference(qualified(pulumi.get_stack()))
    return reference.get_output(OUTPUT).apply(lambda value: value or {})
