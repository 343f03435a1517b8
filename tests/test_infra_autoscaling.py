"""Node autoscaling (infra.autoscaler) and its preview checks (infra.autoscaling_checks), on the real stack files."""

from __future__ import annotations

import re

import pytest
import yaml

from infra.autoscaler import (
    AUTOSCALER_OWNED, RAY_CLUSTER_FIELDS, WORKER_GROUP_FIELDS, WORKER_GROUPS_ANNOTATION, replace_on_changes,
)
from infra.config import load_stack
from infra.manifests import ray_service_annotations, ray_service_spec
from tests.infra_helpers import CRD_DIR, STACKS, config_error, parse_document, problems_of, with_values


def spec_of(document: dict) -> dict:
    stack = parse_document(document)
    images = {hardware: "image" for hardware in stack.needed_hardware()}
    return ray_service_spec(stack, images=images, serve_config_yaml="", hf_secret_name=None, pull_secret_name=None,
                            model_claim_name=None)


def groups_of(spec: dict) -> dict[str, dict]:
    return {g["groupName"]: g for g in spec["rayClusterConfig"]["workerGroupSpecs"]}


# ---- what the RayService says ------------------------------------------------------------------------------------


def test_gpu_stack_scales_its_worker_pods_between_0_and_1_with_the_autoscaler_on():
    spec = spec_of(with_values("gpu", lambda v: None))
    cluster = spec["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] == 60
    sizes = {name: (g["replicas"], g["minReplicas"], g["maxReplicas"]) for name, g in groups_of(spec).items()}
    assert sizes == {"gpu-nvidia": (0, 0, 1), "gpu-nvidia-h100": (0, 0, 1)}
    (app,) = load_stack("gpu").serve.applications
    assert app.args.replica_range == (1, 4) and app.args.tensor_parallel_size == 4


def test_cpu_stack_apps_scale_between_1_and_the_references_2():
    config = load_stack("cpu")
    assert [app.args.replica_range for app in config.serve.applications] == [(1, 2), (1, 2)]
    sizes = {name: (g["minReplicas"], g["maxReplicas"]) for name, g in groups_of(spec_of(
        with_values("cpu", lambda v: None))).items()}
    assert sizes == {"cpu-amd": (1, 1), "cpu-intel": (1, 1), "cpu-amd-2": (0, 1)}


def test_fixed_groups_leave_the_autoscaler_off():
    def fixed(values):
        for group in values["workerGroups"]:
            group.pop("minReplicas", None)
            group.pop("maxReplicas", None)
            group["replicas"] = 1

    cluster = spec_of(with_values("gpu", fixed))["rayClusterConfig"]
    assert "enableInTreeAutoscaling" not in cluster and "autoscalerOptions" not in cluster
    assert {(g["replicas"], g["minReplicas"], g["maxReplicas"]) for g in cluster["workerGroupSpecs"]} == {(1, 1, 1)}


def test_autoscaler_options_from_the_stack_file():
    def tuned(values):
        values["autoscaler"] = {"idleTimeoutSeconds": 300, "upscalingMode": "Conservative", "version": "v2"}

    options = spec_of(with_values("gpu", tuned))["rayClusterConfig"]["autoscalerOptions"]
    assert (options["idleTimeoutSeconds"], options["upscalingMode"], options["version"]) == (300, "Conservative", "v2")


def test_group_size_outside_its_range_names_the_group():
    def bad(values):
        values["workerGroups"][0].update(replicas=3, minReplicas=0, maxReplicas=1)

    assert "llm-serving:workerGroups[0]: replicas 3 is outside minReplicas..maxReplicas (0..1)" in \
        config_error("gpu", bad)


def test_worker_groups_are_named_in_an_annotation():
    assert ray_service_annotations(load_stack("cpu"))[WORKER_GROUPS_ANNOTATION] == "cpu-amd,cpu-intel,cpu-amd-2"


# ---- no fight with the autoscaler, no lost change ---------------------------------------------------------------


def crd_cluster_properties() -> dict:
    crd = yaml.load((CRD_DIR / "ray.io_rayservices.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader",
                                                                                      yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rayClusterConfig"]["properties"]


def test_field_lists_are_the_crds():
    cluster = crd_cluster_properties()
    assert sorted(RAY_CLUSTER_FIELDS) == sorted(cluster)
    assert sorted(WORKER_GROUP_FIELDS) == sorted(cluster["workerGroupSpecs"]["items"]["properties"])


def _parts(path: str) -> list:
    """A Pulumi property path as its parts (resource.ParsePropertyPath: a.b[0]["k"], with [*] as a wildcard)."""
    parts: list = []
    for name, index, key in re.findall(r'([^.\[\]]+)|\[(\d+|\*)\]|\["([^"]+)"\]', path):
        parts.append(name or key or (index if index == "*" else int(index)))
    return parts


def replaces(diff_path: str) -> bool:
    """Whether a change at `diff_path` replaces the RayService: Pulumi's PropertyPath.Contains over our paths."""
    changed = _parts(diff_path)
    for pattern in map(_parts, replace_on_changes()):
        if len(changed) >= len(pattern) and all(p == "*" or p == c for p, c in zip(pattern, changed)):
            return True
    return False


@pytest.mark.parametrize("owned", AUTOSCALER_OWNED)
def test_group_sizes_update_in_place(owned):
    assert not replaces(f"spec.rayClusterConfig.workerGroupSpecs[1].{owned}")


@pytest.mark.parametrize("changed", [
    "spec.rayClusterConfig.workerGroupSpecs[0].template.spec.containers[0].image",
    "spec.rayClusterConfig.workerGroupSpecs[1].rayStartParams.num-cpus",
    "spec.rayClusterConfig.headGroupSpec.template.spec.containers[0].resources.limits.cpu",
    "spec.rayClusterConfig.rayVersion",
    "spec.rayClusterConfig.enableInTreeAutoscaling",
    "spec.rayClusterConfig.autoscalerOptions.idleTimeoutSeconds",
    "spec.rayClusterConfig.authOptions",
    f'metadata.annotations["{WORKER_GROUPS_ANNOTATION}"]',
])
def test_every_other_cluster_change_replaces(changed):
    assert replaces(changed)


def test_serve_config_changes_apply_in_place():
    assert not replaces("spec.serveConfigV2")


# ---- preview checks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_shipped_stacks_pass(stack):
    assert problems_of(stack, lambda v: None) == ""


def test_maximum_beyond_the_groups_at_their_maximum():
    problems = problems_of("gpu", lambda v: v["serve"]["applications"][0]["args"]["autoscaling_config"].update(
        max_replicas=5))
    assert ("serve.applications: all replicas together need {CPU: 100, GPU: 20} but the cluster has "
            "{CPU: 288, GPU: 16} (short {GPU: 4})") in problems


def test_minimum_beyond_the_groups_at_their_minimum():
    problems = problems_of("gpu", lambda v: v["serve"]["applications"][0]["args"]["autoscaling_config"].update(
        min_replicas=3))
    assert ("serve.applications: at their minimum replicas (llama2: 3) the applications need {CPU: 60, GPU: 12}, "
            "but the node groups at their minReplicas (head: 1, gpu-nvidia: 0, gpu-nvidia-h100: 0) have "
            "{CPU: 160, GPU: 8} (short {GPU: 4}): raise a group's minReplicas or lower min_replicas") in problems


def test_a_group_no_replica_fits_never_scales_up():
    def wide(values):
        values["workerGroups"][1]["gpus"] = 2

    problems = problems_of("gpu", wide)
    assert ("workerGroups[1] (gpu-nvidia-h100): scales between 0 and 1 pods, but no application's replica fits "
            "one of its nodes ({CPU: 64, GPU: 2}), so the autoscaler never adds one") in problems


def test_gpus_a_replica_leaves_idle_on_every_node():
    problems = problems_of("gpu", lambda v: v["workerGroups"][0].update(gpus=6))
    assert ("workerGroups[0] (gpu-nvidia): each node has 6 GPUs, but the replicas that land on it reserve GPUs per "
            "replica llama2 (4), so some of every node's GPUs would stay idle") in problems


def test_ray_cpus_beyond_the_pod():
    problems = problems_of("cpu", lambda v: v["workerGroups"][0].update(rayCpus=300))
    assert ("workerGroups[0] (cpu-amd): rayCpus 300 is more than the 256 CPUs its pods reserve, so replicas would "
            "be placed on CPUs the pod does not have") in problems
