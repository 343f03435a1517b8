"""The preview-time checks (infra.checks) on edited real stack files: each problem names the app, the config key and
what is short (no Pulumi runtime needed)."""

from __future__ import annotations

import pytest

from infra.checks import StackCheckError, pack_warnings, raise_for_problems, run_checks
from infra.config import load_stack
from tests.infra_helpers import STACKS, config_error, problems_of


@pytest.mark.parametrize("stack", STACKS)
def test_shipped_stacks_pass_every_check(stack):
    config = load_stack(stack)
    assert run_checks(config) == []
    warnings = pack_warnings(config)
    if stack == "gpu":
        # True of the shipped shape: 70B bf16 on 4x H100 cannot hold 256 full-length sequences; vLLM queues or
        # preempts the rest. The H200 groups hold them all, so exactly one warning.
        assert len(warnings) == 1 and "node group 'gpu-nvidia-h100'" in warnings[0]
        assert "holds 127 sequences of max_model_len 4096" in warnings[0]
    else:
        assert warnings == []


# ---- checked at preview, before anything is created -----------------------------------------------------------


def test_replica_that_fits_no_node_group_names_app_demand_and_best_group():
    problems = problems_of("gpu", lambda v: v["serve"]["applications"][0]["args"].update(gpu_count=16))
    assert ("serve.applications[0] (llama2): one replica needs {CPU: 20, GPU: 16} on a single node, which no "
            "node group offers; best fit is 'head' with {CPU: 160, GPU: 8} (short {GPU: 8})") in problems


def test_replica_needing_a_missing_custom_resource():
    problems = problems_of("cpu", lambda v: v["serve"]["applications"][1]["args"].update(resources={"amd_gpu": 1}))
    assert "serve.applications[1] (llama2-amd): one replica needs {CPU: 64, amd_gpu: 1}" in problems
    assert "(short {amd_gpu: 1})" in problems


def test_cpu_demand_per_replica_beyond_every_node():
    problems = problems_of("cpu", lambda v: v["serve"]["applications"][0]["args"].update(num_cpus=300))
    assert "best fit is 'cpu-intel' with {CPU: 224, intel_cpu: 1000} (short {CPU: 76})" in problems


def test_sum_of_replicas_beyond_the_cluster():
    problems = problems_of("gpu", lambda v: v["serve"]["applications"][0]["args"].update(
        autoscaling_config={"max_replicas": 5}))
    assert ("serve.applications: all replicas together need {CPU: 100, GPU: 20} but the cluster has "
            "{CPU: 288, GPU: 16} (short {GPU: 4})") in problems


def test_disabled_group_does_not_count():
    def disable(values):
        values["workerGroups"][1]["enabled"] = False

    assert "(short {GPU: 4})" in problems_of("gpu", disable)


def test_engine_must_match_the_hardware_it_can_land_on():
    # Without its custom resource the Intel app could be placed on AMD nodes, whose image has no BigDL.
    problems = problems_of("cpu", lambda v: v["serve"]["applications"][0]["args"].update(resources={}))
    assert ("serve.applications[0] (llama2-cpu-intel): engine bigdl on INTEL can land on 'cpu-amd' (AMD, image "
            "engine onnxruntime), 'cpu-amd-2' (AMD, image engine onnxruntime)") in problems


def test_enabling_amd_gpus_without_a_vendor_resource_is_caught():
    problems = problems_of("gpu", lambda v: v["workerGroups"][2].update(enabled=True))
    assert "engine vllm on NVIDIA can land on 'gpu-amd' (AMD_GPU" in problems


def test_route_prefixes_must_be_unique():
    problems = problems_of("cpu", lambda v: v["serve"]["applications"][1].update(routePrefix="/cpu/"))
    assert "serve.applications[1] (llama2-amd): routePrefix /cpu/ is already used by llama2-cpu-intel" in problems


def test_serve_port_must_not_be_a_ray_port():
    assert "serve.port: 8265 is Ray's dashboard port" in problems_of("gpu", lambda v: v["serve"].update(port=8265))
    assert "serve.port: 8404 is Ray's HAProxy stats port" in problems_of("gpu", lambda v: v["serve"].update(port=8404))
    assert ("serve.port: 30080 is in Serve's replica HTTP (direct ingress) range 30000-30999"
            in problems_of("gpu", lambda v: v["serve"].update(port=30080)))


def test_every_node_group_needs_an_image():
    problems = problems_of("cpu", lambda v: v["images"].pop("AMD"))
    assert "images.AMD: node group(s) ['cpu-amd', 'cpu-amd-2'] run on AMD but no image is configured" in problems


def test_images_must_carry_the_clusters_ray_version():
    problems = problems_of("gpu", lambda v: v.update(rayVersion="2.61.0"))
    assert "images.NVIDIA: images/nvidia/Dockerfile has ARG RAY_VERSION=2.60.0, the cluster needs 2.61.0" in problems
    assert "images.NVIDIA: images/nvidia/requirements.txt pins ray 2.60.0, the cluster's rayVersion is 2.61.0" \
        in problems


def test_images_must_carry_the_clusters_python():
    problems = problems_of("cpu", lambda v: v.update(pythonVersion="3.12"))
    assert ("images.INTEL: images/cpu/Dockerfile's base carries Python 3.11, the cluster runs pythonVersion 3.12; "
            "Ray needs one Python on every node") in problems


DIGEST = "sha256:" + "d" * 64
AMD_GPU_BASE = f"rocm/vllm:rocm6.4.1_vllm_0.10.1_20250909@{DIGEST}"


def enable_amd_gpus(values, **image):
    values["workerGroups"][2]["enabled"] = True
    values["images"]["AMD_GPU"].update(image)


def test_amd_gpu_image_is_the_python_of_its_base():
    # vLLM's ROCm images carry Python 3.12; a 3.11 cluster cannot take them (Ray needs one Python per cluster).
    problems = problems_of("gpu", lambda v: enable_amd_gpus(v, buildArgs={"BASE_IMAGE": AMD_GPU_BASE}))
    assert ("images.AMD_GPU: images/amd-gpu/Dockerfile's base carries Python 3.12, the cluster runs pythonVersion "
            "3.11; Ray needs one Python on every node: set pythonVersion to it, or build this image on a base with "
            "3.11 (buildArgs naming the base, and images.AMD_GPU.pythonVersion)") in problems


def test_a_cluster_on_the_rocm_python_builds_every_image_on_it():
    def edit(values):
        enable_amd_gpus(values, buildArgs={"BASE_IMAGE": AMD_GPU_BASE})
        values["pythonVersion"] = "3.12"
        values["images"]["NVIDIA"].update(pythonVersion="3.12", buildArgs={
            "PYTHON_IMAGE": f"python:3.12.12-slim-bookworm@{DIGEST}"})

    assert "Python" not in problems_of("gpu", edit)


def test_the_rocm_base_is_named_by_the_stack():
    problems = problems_of("gpu", enable_amd_gpus)
    assert ("images.AMD_GPU.buildArgs: images/amd-gpu/Dockerfile: `${BASE_IMAGE}`: $BASE_IMAGE has no default: set "
            "it in buildArgs") in problems


def test_a_base_image_must_be_pinned_by_digest():
    problems = problems_of("gpu", lambda v: v["images"]["NVIDIA"].update(
        buildArgs={"PYTHON_IMAGE": "python:3.11.14-slim-bookworm"}))
    assert ("images.NVIDIA: images/nvidia/Dockerfile builds on python:3.11.14-slim-bookworm, not pinned by digest "
            "(<image>:<tag>@sha256:<digest>)") in problems


def test_both_cpu_images_carry_the_clusters_ray_version():
    # Each resolves the shared Dockerfile's requirements/${ENGINE}.txt with its own buildArgs.
    problems = problems_of("cpu", lambda v: v.update(rayVersion="2.61.0"))
    assert "images.INTEL: requirements/bigdl.txt pins ray 2.60.0, the cluster's rayVersion is 2.61.0" in problems
    assert "images.AMD: requirements/onnxruntime.txt pins ray 2.60.0, the cluster's rayVersion is 2.61.0" in problems


# ---- build args ------------------------------------------------------------------------------------------------


def set_build_args(hardware: str, build_args):
    return lambda values: values["images"][hardware].update(buildArgs=build_args)


def test_missing_build_arg_is_unresolvable():
    problems = problems_of("cpu", lambda v: v["images"]["AMD"].pop("buildArgs"))
    assert ("images.AMD.buildArgs: images/cpu/Dockerfile: `requirements/${ENGINE}.txt`: $ENGINE has no "
            "default: set it in buildArgs") in problems


def test_misspelt_build_arg_is_named():
    problems = problems_of("cpu", set_build_args("AMD", {"ENGIN": "onnxruntime"}))
    assert "images.AMD.buildArgs.ENGIN: images/cpu/Dockerfile declares no ARG ENGIN" in problems
    assert "images.AMD.buildArgs: images/cpu/Dockerfile: `requirements/${ENGINE}.txt`" in problems


def test_build_arg_naming_no_requirements_file():
    problems = problems_of("cpu", set_build_args("AMD", {"ENGINE": "onnx"}))
    assert ("images.AMD: images/cpu/Dockerfile copies requirements/onnx.txt (buildArgs {'ENGINE': 'onnx'}), which "
            "does not exist") in problems
    assert "images.AMD.buildArgs.ENGINE: onnx, but AMD images carry onnxruntime" in problems


def test_build_args_must_give_the_hardware_its_engine():
    def swap(values):
        set_build_args("INTEL", {"ENGINE": "onnxruntime"})(values)
        set_build_args("AMD", {"ENGINE": "bigdl"})(values)

    problems = problems_of("cpu", swap).splitlines()
    assert problems == ["images.INTEL.buildArgs.ENGINE: onnxruntime, but INTEL images carry bigdl",
                        "images.AMD.buildArgs.ENGINE: bigdl, but AMD images carry onnxruntime"]


@pytest.mark.parametrize("name, key", [("RAY_VERSION", "rayVersion"), ("PYTHON_VERSION", "pythonVersion")])
def test_build_args_cannot_override_the_stacks_versions(name, key):
    message = config_error("cpu", set_build_args("AMD", {"ENGINE": "onnxruntime", name: "1"}))
    assert f"llm-serving:images.AMD.buildArgs.{name}: set from the stack's {key}, not in buildArgs" in message


def test_build_args_are_typed():
    assert "llm-serving:images.AMD.buildArgs.ENGINE: Input should be a valid string" in \
        config_error("cpu", set_build_args("AMD", {"ENGINE": 3}))
    assert "llm-serving:images.AMD.buildArgs.BAD-NAME: not a Dockerfile ARG name" in \
        config_error("cpu", set_build_args("AMD", {"BAD-NAME": "x"}))
    assert "llm-serving:images.AMD.buildArg: Extra inputs are not permitted" in \
        config_error("cpu", lambda v: v["images"]["AMD"].update(buildArg={"ENGINE": "onnxruntime"}))


def test_build_args_only_for_a_build():
    digest = "sha256:" + "a" * 64
    message = config_error("cpu", lambda v: v["images"].update(AMD={
        "reference": f"example.com/amd@{digest}", "rayVersion": "2.60.0", "pythonVersion": "3.11",
        "buildArgs": {"ENGINE": "onnxruntime"}}))
    assert "llm-serving:images.AMD: buildArgs applies to a dockerfile build, not a prebuilt reference" in message


def test_prebuilt_image_versions_are_checked():
    digest = "sha256:" + "a" * 64
    problems = problems_of("cpu", lambda v: v["images"].update(AMD={
        "reference": f"example.com/amd@{digest}", "rayVersion": "2.59.0", "pythonVersion": "3.11"}))
    assert "images.AMD: image carries Ray 2.59.0, the cluster runs rayVersion 2.60.0" in problems


def test_model_path_on_the_volume_needs_model_storage():
    def edit(values):
        values.pop("modelStorage")
        values["serve"]["applications"][0]["args"]["model_name"] = "/models/Llama-2-70b-chat-hf"

    assert "args.model_name: /models/Llama-2-70b-chat-hf is on the model volume but modelStorage" in \
        problems_of("gpu", edit)


def test_problems_are_raised_together():
    with pytest.raises(StackCheckError) as error:
        raise_for_problems(["a", "b"])
    assert str(error.value) == "stack checks failed:\n  - a\n  - b"


INCREMENTAL = {"type": "NewClusterWithIncrementalUpgrade",
               "clusterUpgradeOptions": {"gatewayClassName": "istio", "intervalSeconds": 30, "stepSizePercent": 25}}


def test_incremental_upgrade_needs_the_autoscaler():
    def fixed_size(values):
        values["rayService"]["upgradeStrategy"] = INCREMENTAL
        for group in values["workerGroups"]:
            group.pop("minReplicas", None)
            group["replicas"] = group.pop("maxReplicas", group.get("replicas", 1))

    problems = problems_of("gpu", fixed_size)
    assert ("rayService.upgradeStrategy: NewClusterWithIncrementalUpgrade needs KubeRay's autoscaler, which this "
            "stack does not run (KubeRay 1.7 refuses it: \"Ray Autoscaler is required for "
            "NewClusterWithIncrementalUpgrade\")") in problems
    assert "gatewayClassName 'istio' (preview reads that GatewayClass)" in problems
    assert "NewClusterWithIncrementalUpgrade" not in problems_of(
        "gpu", lambda v: v["rayService"].update(upgradeStrategy=INCREMENTAL))  # the shipped gpu stack autoscales


def test_incremental_step_within_the_surge():
    options = {**INCREMENTAL["clusterUpgradeOptions"], "stepSizePercent": 50, "maxSurgePercent": 25}
    message = config_error("gpu", lambda v: v["rayService"].update(
        upgradeStrategy={**INCREMENTAL, "clusterUpgradeOptions": options}))
    assert "stepSizePercent must be less than or equal to maxSurgePercent" in message
