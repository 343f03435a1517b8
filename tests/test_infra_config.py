"""Stack-file validation on the real stack files: each bad value fails with the config key path (no Pulumi runtime
needed)."""

from __future__ import annotations

import pytest

from infra.config import StackConfigError, load_stack, parse_stack_config, to_pulumi_config
from tests.infra_helpers import config_error, parse_document, stack_document, with_values


def test_gpu_stack_describes_the_cluster_it_targets():
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
    assert (args.model_name, args.data_type.value, args.gpu_count, args.replica_range, args.max_ongoing_requests,
            args.num_cpus) == ("meta-llama/Llama-2-70b-chat-hf", "bfloat16", 4, (1, 4), 256, 20)
    assert config.serve.port == 8000


def test_cpu_stack_describes_the_cluster_it_targets():
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
    assert message.startswith("llm-serving:namespace: only hfToken, registryPassword, apiKeys may be secret config; "
                              "this value goes into plain manifests: set it without --secret")


def test_a_structured_value_set_secret_is_refused_as_the_cli_hands_it_over():
    # `pulumi config set --secret --path serve.port 8000`: the CLI passes the whole value decrypted, as JSON text,
    # and names the key in PULUMI_CONFIG_SECRET_KEYS.
    config = to_pulumi_config(stack_document("gpu"))
    parse_stack_config(config)  # the same values, not secret: fine
    with pytest.raises(StackConfigError) as error:
        parse_stack_config(config, secret_keys=["llm-serving:serve", "llm-serving:hfToken"])
    assert str(error.value).startswith("llm-serving:serve: only hfToken, registryPassword, apiKeys may be secret")
    assert "pulumi config rm llm-serving:serve" in str(error.value)


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
    message = config_error("gpu", lambda v: v["dashboard"].update(serviceType="NodePort", auth="disabled"))
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


def test_rocr_visible_devices_is_refused_on_amd_gpus():
    message = config_error("gpu", lambda v: v["workerGroups"][2].update(env={"ROCR_VISIBLE_DEVICES": "0"}))
    assert "llm-serving:workerGroups[2].env.ROCR_VISIBLE_DEVICES: Ray refuses to start with it set" in message


def test_pulumi_waits_longer_than_kuberay_gives_a_ray_service():
    # Else `up` stops waiting before KubeRay's verdict and the next `up` cannot know to replace the RayService.
    message = config_error("cpu", lambda v: v["rayService"].update(initializingTimeout="90m", pulumiTimeout="1h"))
    assert "llm-serving:rayService: pulumiTimeout 1h must be longer than initializingTimeout 90m" in message
