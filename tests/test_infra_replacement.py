"""Which changes replace the RayService (infra/replacement.py), decided against the stack's last deployment: worker
groups appended at the end join the running cluster (KubeRay adds them in place), any other rayClusterConfig change
replaces it and preview says which; a RayService KubeRay gave up on (initializing timeout) is replaced by the next
up."""

from __future__ import annotations

import copy

import pulumi
import pytest

from infra import replacement
from infra.autoscaler import WORKER_GROUPS_ANNOTATION, replace_on_changes
from infra.mocks import STACK_REFERENCE
from infra.previous import OUTPUT
from infra.program import main
from infra.ray_service import LlmRayService
from tests.infra_helpers import pulumi_config, stack_document, with_values


def cluster(groups=("a", "b"), image="img@sha256:1") -> dict:
    def pod(name):
        return {"metadata": {"labels": {"group": name}}, "spec": {"containers": [{"image": image}]}}

    return {"rayVersion": "2.60.0", "headGroupSpec": {"template": pod("head")},
            "workerGroupSpecs": [{"groupName": g, "replicas": 1, "minReplicas": 0, "maxReplicas": 1,
                                  "template": pod(g)} for g in groups]}


def deployed(spec: dict) -> dict:
    """The facts a run leaves (rayService part of infra/previous.py's output)."""
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    annotation, generation = replacement.layout({}, names)
    return {"workerGroups": names, "layout": annotation, "layoutGeneration": generation,
            "fingerprints": replacement.fingerprints(spec), "trigger": replacement.FIRST}


def test_appended_groups_keep_the_cluster():
    before = deployed(cluster(("a", "b")))
    assert replacement.layout(before, ["a", "b", "c"]) == ("a,b", 1)
    assert replacement.changes(before, replacement.fingerprints(cluster(("a", "b", "c")))) == ([], ["c"])


@pytest.mark.parametrize("groups", [("a",), ("b", "a"), ("a", "c")])
def test_removed_or_reordered_groups_replace_it(groups):
    before = deployed(cluster(("a", "b")))
    annotation, generation = replacement.layout(before, list(groups))
    assert (annotation, generation) == (f"{','.join(groups)} (layout 2)", 2)
    assert annotation != before["layout"]
    # Stable from then on, and a later return to the first layout is a change again.
    after = {**before, "workerGroups": list(groups), "layout": annotation, "layoutGeneration": generation}
    assert replacement.layout(after, list(groups)) == (annotation, 2)
    assert replacement.layout(after, ["z"])[0] == "z (layout 3)"
    replaced, appended = replacement.changes(before, replacement.fingerprints(cluster(groups)))
    assert appended == [] and replaced[0].startswith("workerGroups: ['a', 'b'] -> ")


def test_a_stack_deployed_before_this_keeps_its_annotation():
    assert replacement.layout({}, ["a", "b"]) == ("a,b", 1)  # what infra/autoscaler.py wrote
    assert replacement.changes({}, replacement.fingerprints(cluster())) == ([], [])


def test_preview_names_what_replaces_and_not_what_the_autoscaler_owns():
    before = deployed(cluster())
    changed = cluster(image="img@sha256:2")
    replaced, _ = replacement.changes(before, replacement.fingerprints(changed))
    assert replaced == ["rayClusterConfig.headGroupSpec", "workerGroups[a].template", "workerGroups[b].template"]
    sizes = copy.deepcopy(cluster())
    sizes["workerGroupSpecs"][0].update(replicas=1, minReplicas=1, maxReplicas=3)
    assert replacement.changes(before, replacement.fingerprints(sizes)) == ([], [])


def test_field_replacement_paths_leave_an_appended_group_alone():
    # Pulumi replaces when a replace_on_changes path contains a diff path; appending is a diff at
    # workerGroupSpecs[2], which no field path under workerGroupSpecs[*] contains.
    group_paths = [p for p in replace_on_changes() if ".workerGroupSpecs" in p]
    assert group_paths and all(p.startswith("spec.rayClusterConfig.workerGroupSpecs[*].") for p in group_paths)
    assert f'metadata.annotations["{WORKER_GROUPS_ANNOTATION}"]' in replace_on_changes()


def test_a_timed_out_ray_service_is_replaced_once():
    before = {**deployed(cluster()), "uid": "uid-1", "timedOut": True}
    trigger = replacement.recovery(before)
    assert trigger == "replaces uid-1" != replacement.FIRST
    replaced = {**before, "trigger": trigger, "uid": "uid-2", "timedOut": False}
    assert replacement.recovery(replaced) == trigger  # the new one stays
    assert replacement.recovery({}) == replacement.FIRST  # never null: Pulumi ignores a trigger that was null


def test_facts_record_kuberays_verdict():
    now = replacement.fingerprints(cluster())
    facts = LlmRayService._facts({}, ("a,b", 1), now, {"uid": "u"},
                                 {"conditions": [{"type": "Ready", "status": "False", "reason": "InitializingTimeout"}]})
    assert (facts["uid"], facts["timedOut"], facts["trigger"], facts["workerGroups"]) == ("u", True, "first", ["a", "b"])


@pulumi.runtime.test
def test_the_program_keeps_the_annotation_when_a_group_is_appended(mocks):
    # Last deployment: the gpu stack without its second NVIDIA group.
    mocks.existing[(STACK_REFERENCE, "organization/llm-serving/test")] = {"outputs": {OUTPUT: {"rayService": {
        "workerGroups": ["gpu-nvidia"], "layout": "gpu-nvidia", "layoutGeneration": 1, "trigger": "first"}}}}
    pulumi.runtime.set_all_config(pulumi_config(stack_document("gpu")), [])
    deployment = main()

    def check(_):
        (service,) = [r for r in mocks.resources if r.inputs.get("kind") == "RayService"]
        assert service.inputs["metadata"]["annotations"][WORKER_GROUPS_ANNOTATION] == "gpu-nvidia"

    return deployment.ray_service.ray_service.urn.apply(check)


@pulumi.runtime.test
def test_the_program_changes_it_when_a_group_is_removed(mocks):
    mocks.existing[(STACK_REFERENCE, "organization/llm-serving/test")] = {"outputs": {OUTPUT: {"rayService": {
        "workerGroups": ["gpu-nvidia", "gpu-nvidia-h100", "spare"], "layout": "gpu-nvidia,gpu-nvidia-h100,spare",
        "layoutGeneration": 1, "trigger": "first"}}}}
    pulumi.runtime.set_all_config(pulumi_config(with_values("gpu", lambda v: None)), [])
    deployment = main()

    def check(_):
        (service,) = [r for r in mocks.resources if r.inputs.get("kind") == "RayService"]
        assert service.inputs["metadata"]["annotations"][WORKER_GROUPS_ANNOTATION] == \
            "gpu-nvidia,gpu-nvidia-h100 (layout 2)"

    return deployment.ray_service.ray_service.urn.apply(check)
