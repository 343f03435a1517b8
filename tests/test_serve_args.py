"""The serve-argument model: valid, invalid, legacy names, refused hf_token. No Ray, no engine needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serving_app.placement import replica_demand
from serving_app.serve_args import DataType, EngineName, ServeArgs, TargetDevice, parse_serve_args


def test_minimal_args_take_gpu_defaults():
    args = ServeArgs(model_name="meta-llama/Llama-2-7b-chat-hf")
    assert args.engine is EngineName.VLLM
    assert args.target_device is TargetDevice.NVIDIA
    assert args.data_type is DataType.AUTO
    assert args.gpu_count == 1 and args.tensor_parallel_size == 1
    assert args.served_model_name == "meta-llama/Llama-2-7b-chat-hf"
    assert replica_demand(args) == {"CPU": 1, "GPU": 1.0}


def test_reference_style_args_are_accepted():
    args = parse_serve_args({
        "model_name": "/models/llama-2-70b", "data_type": "bf16", "gpu_count": 4, "batch_size": 64,
        "batch_timeout": 0.1, "max_new_tokens": 512, "temperature": 0.2, "target_device": "nvidia",
        "max_concurrent_queries": 256,
    })
    assert args.data_type is DataType.BFLOAT16
    assert args.tensor_parallel_size == 4
    assert args.max_ongoing_requests == 256
    assert args.target_device is TargetDevice.NVIDIA


@pytest.mark.parametrize("target,expected_engine,data_type", [
    ("INTEL", EngineName.BIGDL, DataType.INT8),
    ("AMD", EngineName.ONNXRUNTIME, DataType.INT8),
    ("AMD_GPU", EngineName.VLLM, DataType.AUTO),
    ("CPU", EngineName.VLLM, DataType.AUTO),
])
def test_engine_and_precision_follow_the_target(target, expected_engine, data_type):
    args = ServeArgs(model_name="m", target_device=target)
    assert (args.engine, args.data_type) == (expected_engine, data_type)
    assert args.gpu_count == (1 if target == "AMD_GPU" else 0)


def test_cpu_replica_demand_carries_custom_resources():
    args = ServeArgs(model_name="m", target_device="AMD", num_cpus=32, resources={"amd_cpu": 1}, num_replicas=2)
    assert replica_demand(args) == {"CPU": 32, "amd_cpu": 1}


def test_hf_token_is_refused_with_a_pointer_to_the_environment():
    with pytest.raises(ValueError) as error:
        parse_serve_args({"model_name": "m", "hf_token": "hf_secret"})
    assert "args.hf_token: not accepted in serve args" in str(error.value)
    assert "HF_TOKEN environment variable" in str(error.value)
    assert "hf_secret" not in str(error.value)


@pytest.mark.parametrize("raw,message", [
    ({}, "args.model_name: Field required"),
    ({"model_name": "m", "gpu_count": "four"}, "args.gpu_count: Input should be a valid integer"),
    ({"model_name": "m", "tempreature": 1}, "args.tempreature: Extra inputs are not permitted"),
    ({"model_name": "m", "target_device": "TPU"}, "args.target_device: Input should be"),
    ({"model_name": "m", "engine": "bigdl"}, "args.engine: engine 'bigdl' cannot run on target_device 'NVIDIA'"),
    ({"model_name": "m", "target_device": "INTEL", "data_type": "bf16"}, "args.data_type: 'bfloat16' is not supported by engine 'bigdl'"),
    ({"model_name": "m", "target_device": "INTEL", "gpu_count": 2}, "args.gpu_count: must be 0"),
    ({"model_name": "m", "gpu_count": 0}, "args.gpu_count: must be at least 1"),
    ({"model_name": "m", "engine_kwargs": {"tensor_parallel_size": 2}}, "args.engine_kwargs.tensor_parallel_size: set by the typed argument 'gpu_count'"),
    ({"model_name": "m", "engine_kwargs": {"hf_token": "x"}}, "args.engine_kwargs.hf_token: tokens must come from"),
    ({"model_name": "m", "engine_kwargs": {"token": "x"}}, "HF_TOKEN environment variable"),
    ({"model_name": "m", "resources": {"GPU": 1}}, "args.resources.GPU: use num_cpus"),
    ({"model_name": "m", "max_new_tokens": 0}, "args.max_new_tokens: Input should be greater than or equal to 1"),
    ({"model_name": "m", "max_ongoing_requests": 8, "max_concurrent_queries": 8}, "args.max_concurrent_queries: give max_ongoing_requests or its old name, not both"),
])
def test_bad_args_name_the_field(raw, message):
    with pytest.raises(ValueError) as error:
        parse_serve_args(raw)
    assert message in str(error.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as error:
        parse_serve_args({"model_name": "", "batch_size": 0, "surprise": True}, where="applications[0].args")
    text = str(error.value)
    for field in ("model_name", "batch_size", "surprise"):
        assert f"applications[0].args.{field}" in text


def test_validated_args_survive_a_round_trip():
    args = ServeArgs(model_name="m", target_device="AMD", engine_kwargs={"num_threads": 8})
    assert ServeArgs.model_validate(args.model_dump(mode="json")) == args


def test_the_model_imports_without_ray_or_engines():
    code = (
        "import sys; import serving_app.serve_args, serving_app.protocol, serving_app.engines.base; "
        "bad = [m for m in ('ray', 'vllm', 'torch', 'bigdl', 'optimum', 'onnxruntime') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_engine_kwargs_are_checked_before_any_replica_starts():
    with pytest.raises(ValueError) as error:
        parse_serve_args({"model_name": "m", "target_device": "AMD", "engine_kwargs": {"convrt": True}})
    assert "args.engine_kwargs.convrt: not understood by the onnxruntime engine" in str(error.value)
    assert "convert:" in str(error.value)
    args = parse_serve_args({"model_name": "m", "target_device": "INTEL",
                             "engine_kwargs": {"low_bit_cache_dir": "/models/cache", "max_prefill_tokens": 2048}})
    assert args.engine_kwargs["max_prefill_tokens"] == 2048


def test_an_unknown_int8_kernel_target_fails_at_preview():
    with pytest.raises(ValueError, match=r"engine_kwargs.quantization: 'avx3' is not one of auto, avx2"):
        parse_serve_args({"model_name": "m", "target_device": "AMD", "engine_kwargs": {"quantization": "avx3"}})
    assert parse_serve_args({"model_name": "m", "target_device": "AMD",
                             "engine_kwargs": {"quantization": "auto"}}).engine_kwargs["quantization"] == "auto"


@pytest.mark.parametrize("flags, target", [
    ("fpu sse2 avx2 avx512f avx512bw avx512_vnni", "avx512_vnni"),  # Zen 4, Sapphire Rapids
    ("fpu sse2 avx2 avx_vnni", "avx512_vnni"),  # 256-bit VNNI: the same signed int8 kernels hold
    ("fpu sse2 avx2 fma", "avx2"),  # Zen 2/3: u8 weights, no saturation
])
def test_auto_quantization_follows_the_cpu(tmp_path, flags: str, target: str):
    import platform

    from serving_app.engines.onnxruntime.convert import resolve_quantization

    if platform.machine().lower() in ("aarch64", "arm64"):
        pytest.skip("x86 flags")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert resolve_quantization("auto", str(cpuinfo)) == target
    assert resolve_quantization("avx2", str(cpuinfo)) == "avx2"
    assert resolve_quantization("auto", str(tmp_path / "missing")) == "avx2"
