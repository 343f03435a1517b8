"""Stack-file validation and the preview-time checks, on the real stack files (no Pulumi runtime needed)."""

from __future__ import annotations

import pytest

from infra.checks import StackCheckError, pack_warnings, raise_for_problems, run_checks
from infra.config import StackConfigError, load_stack
from infra.serve_config import serve_config
from tests.infra_helpers import STACKS, parse_document, with_values


def problems_of(stack: str, edit) -> str:
    return "\n".join(run_checks(parse_document(with_values(stack, edit))))


def config_error(stack: str, edit) -> str:
    with pytest.raises(StackConfigError) as error:
        parse_document(with_values(stack, edit))
    return str(error.value)


@pytest.mark.parametrize("stack", STACKS)
def test_shipped_stacks_pass_every_check(stack):
    config = load_stack(stack)
    assert run_checks(config) == []
    assert pack_warnings(config) == []


def test_gpu_stack_reproduces_the_reference_cluster():
    config = load_stack("gpu")
    head = config.head_group
    assert (head.cpu, head.memory, head.gpus, head.gpu_resource) == (160, "300G", 8, "nvidia.com/gpu")
    groups = {g.name: g for g in config.worker_groups}
    assert groups["gpu-nvidia"].gpus == 4 and "kubernetes.io/hostname" in groups["gpu-nvidia"].node_selector
    assert groups["gpu-nvidia-h100"].gpus == 4
    assert all(g.runtime_class_name == "nvidia" for g in (head, groups["gpu-nvidia"], groups["gpu-nvidia-h100"]))
    amd = groups["gpu-amd"]
    assert (amd.enabled, amd.gpu_resource, amd.hardware.value) == (False, "amd.com/gpu", "AMD_GPU")
    (app,) = config.serve.applications
    assert (app.name, app.route_prefix) == ("llama2", "/")
    args = app.args
    assert (args.model_name, args.data_type.value, args.gpu_count, args.num_replicas, args.max_ongoing_requests,
            args.num_cpus) == ("meta-llama/Llama-2-70b-chat-hf", "bfloat16", 4, 4, 256, 20)
    assert config.serve.port == 8000


def test_cpu_stack_reproduces_the_reference_cluster():
    config = load_stack("cpu")
    vendor = "feature.node.kubernetes.io/cpu-model.vendor_id"
    assert config.head_group.node_selector[vendor] == "Intel"
    groups = {g.name: g for g in config.worker_groups}
    assert (groups["cpu-amd"].cpu, groups["cpu-intel"].cpu, groups["cpu-amd-2"].cpu) == (256, 224, 128)
    assert "amd_cpu" in groups["cpu-amd"].ray_resources and "amd_cpu" in groups["cpu-amd-2"].ray_resources
    apps = {a.name: a for a in config.serve.applications}
    assert apps["llama2-cpu-intel"].route_prefix == "/cpu" and apps["llama2-cpu-intel"].args.engine.value == "bigdl"
    assert apps["llama2-amd"].route_prefix == "/acpu" and apps["llama2-amd"].args.engine.value == "onnxruntime"
    assert apps["llama2-amd"].args.resources == {"amd_cpu": 1}
    assert {a.args.data_type.value for a in apps.values()} == {"int8"}
    assert config.serve.port == 8001


# ---- a bad stack file fails with pydantic's message and the config key path ----------------------------------


def test_unknown_key_names_its_path():
    message = config_error("gpu", lambda v: v["workerGroups"][0].update(gpuz=4))
    assert "llm-serving:workerGroups[0].gpuz: Extra inputs are not permitted" in message


def test_unknown_top_level_key():
    message = config_error("cpu", lambda v: v.update(replicaCount=3))
    assert "llm-serving:replicaCount: Extra inputs are not permitted" in message


def test_only_the_secret_keys_may_be_secret():
    message = config_error("gpu", lambda v: v.update(namespace={"secure": "v1:AAAA"}))
    assert message == "llm-serving:namespace: only hfToken, registryPassword may be secret config"


def test_wrong_type_names_its_path():
    message = config_error("gpu", lambda v: v["headGroup"].update(cpu="lots"))
    assert "llm-serving:headGroup.cpu: Input should be a valid integer" in message


def test_missing_required_value():
    message = config_error("cpu", lambda v: v.pop("rayVersion"))
    assert "llm-serving:rayVersion: Field required" in message


def test_serve_args_are_validated_by_the_serving_apps_model():
    message = config_error("gpu", lambda v: v["serve"]["applications"][0]["args"].update(gpu_count="four"))
    assert "llm-serving:serve.applications[0].args.gpu_count: Input should be a valid integer" in message
    message = config_error("cpu", lambda v: v["serve"]["applications"][1]["args"].update(engine="bigdl"))
    assert "llm-serving:serve.applications[1].args" in message
    assert "engine 'bigdl' cannot run on target_device 'AMD'" in message


def test_token_in_serve_args_is_refused():
    message = config_error("gpu", lambda v: v["serve"]["applications"][0]["args"].update(hf_token="hf_x"))
    assert "llm-serving:serve.applications[0].args" in message and "hf_token" in message
    assert "HF_TOKEN environment variable" in message


def test_plain_secret_looking_env_is_refused():
    message = config_error("cpu", lambda v: v["workerGroups"][1].update(env={"HF_TOKEN": "x"}))
    assert "llm-serving:workerGroups[1].env: Value error, HF_TOKEN" in message or "HF_TOKEN: secrets" in message


def test_dashboard_is_not_exposed_without_auth():
    message = config_error("gpu", lambda v: v["dashboard"].update(serviceType="NodePort"))
    assert "llm-serving:dashboard: serviceType NodePort exposes the Ray dashboard" in message
    parse_document(with_values("gpu", lambda v: v["dashboard"].update(serviceType="NodePort", auth="token")))


def test_incremental_upgrade_needs_its_options():
    message = config_error("gpu", lambda v: v["rayService"]["upgradeStrategy"].update(
        type="NewClusterWithIncrementalUpgrade"))
    assert "llm-serving:rayService.upgradeStrategy: NewClusterWithIncrementalUpgrade needs clusterUpgradeOptions" \
        in message


def test_prebuilt_reference_must_pin_a_digest():
    message = config_error("cpu", lambda v: v["images"].update(AMD={"reference": "example.com/amd:latest",
                                                                    "rayVersion": "2.60.0",
                                                                    "pythonVersion": "3.11"}))
    assert "llm-serving:images.AMD: reference must pin a digest" in message


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
    problems = problems_of("gpu", lambda v: v["serve"]["applications"][0]["args"].update(num_replicas=5))
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
    assert "images.INTEL: images/cpu/Dockerfile has ARG PYTHON_VERSION=3.11, the cluster needs 3.12" in problems


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
    assert ("images.AMD.buildArgs: images/cpu/Dockerfile copies `requirements/${ENGINE}.txt`: $ENGINE has no "
            "default: set it in buildArgs") in problems


def test_misspelt_build_arg_is_named():
    problems = problems_of("cpu", set_build_args("AMD", {"ENGIN": "onnxruntime"}))
    assert "images.AMD.buildArgs.ENGIN: images/cpu/Dockerfile declares no ARG ENGIN" in problems
    assert "images.AMD.buildArgs: images/cpu/Dockerfile copies `requirements/${ENGINE}.txt`" in problems


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
    assert "images.AMD: image carries Ray 2.59.0 / Python 3.11, the cluster runs rayVersion 2.60.0" in problems


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


# ---- serveConfigV2 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_serve_config_is_valid_for_ray_serve(stack):
    from ray.serve.schema import ServeDeploySchema

    config = load_stack(stack)
    rendered = serve_config(config)
    ServeDeploySchema.model_validate(rendered)
    assert rendered["http_options"]["port"] == config.serve.port
    assert [a["route_prefix"] for a in rendered["applications"]] == [a.route_prefix for a in config.serve.applications]
    assert all(a["import_path"] == "serving_app:typed_app_builder" for a in rendered["applications"])


def test_serve_config_model_path_override_revalidates():
    config = load_stack("cpu")
    rendered = serve_config(config, model_path="/tmp/tiny-llama")
    for app in rendered["applications"]:
        assert app["args"]["model_name"] == "/tmp/tiny-llama"
        assert app["args"]["served_model_name"] == "meta-llama/Llama-2-7b-chat-hf"
    per_app = serve_config(config, model_path={"llama2-amd": "/tmp/onnx"})
    assert [a["args"]["model_name"] for a in per_app["applications"]] == ["meta-llama/Llama-2-7b-chat-hf", "/tmp/onnx"]
    with pytest.raises(ValueError, match=r"serve.applications\[0\].args.num_cpus"):
        serve_config(config, args_overrides={"num_cpus": -1})
