"""The GPU-memory fit estimate on the shipped shapes: parameter counts, the issue's fit cases, how FP8 weights arrive,
and the estimate against what vLLM 0.25.1 reported at start on one H200 (benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving_app.gpu_memory import GPU_MODELS, GiB, estimate
from serving_app.model_shapes import KNOWN_SHAPES, known_shape, model_shape
from serving_app.serve_args import parse_serve_args

SHAPES = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_models"
H200, H100 = GPU_MODELS["H200"], GPU_MODELS["H100"]
LLAMA2_70B = "meta-llama/Llama-2-70b-chat-hf"


def fit(gpu, model: str = LLAMA2_70B, **args):
    return estimate(parse_serve_args({"model_name": model, **args}), gpu.name, gpu.memory_bytes)


@pytest.mark.parametrize("name, billions", [("Llama-2-7B", 6.738), ("Llama-2-13B", 13.016), ("Llama-2-70B", 68.977),
                                            ("Llama-3-8B", 8.030), ("Llama-3-70B", 70.554)])
def test_table_shapes_have_the_published_parameter_counts(name: str, billions: float):
    (shape,) = [shape for _, shape in KNOWN_SHAPES if shape.name == f"shapes table: {name}"]
    assert shape.parameters / 1e9 == pytest.approx(billions, abs=0.001)


@pytest.mark.parametrize("size", ["7b", "70b"])
def test_a_readable_config_json_gives_the_same_shape_as_the_table(tmp_path: Path, size: str):
    (tmp_path / "config.json").write_text((SHAPES / f"llama2-{size}.json").read_text())
    from_config, from_table = model_shape(str(tmp_path)), known_shape(f"meta-llama/Llama-2-{size}-chat-hf")
    assert from_config.name.startswith("config.json") and from_table.name.startswith("shapes table")
    assert from_config.parameters == from_table.parameters
    assert from_config.kv_elements_per_token() == from_table.kv_elements_per_token()
    assert known_shape(f"/models/Llama-2-{size}-chat-hf") == from_table


def test_70b_bf16_tp4_fits_four_80gb_gpus():
    estimate_ = fit(H100, data_type="bfloat16", gpu_count=4, max_model_len=4096, batch_size=32)
    assert estimate_.can_start and estimate_.fits


@pytest.mark.parametrize("gpu", [H100, H200])
def test_70b_bf16_on_one_gpu_cannot_start(gpu):
    estimate_ = fit(gpu, data_type="bfloat16")
    assert not estimate_.can_start and estimate_.weights > estimate_.budget - estimate_.overhead


def test_70b_fp8_fits_one_h200_but_not_one_h100():
    on_h200 = fit(H200, data_type="fp8", max_model_len=4096, batch_size=32)
    on_h100 = fit(H100, data_type="fp8", max_model_len=4096, batch_size=32)
    assert on_h200.fits
    # On 80 GB it starts (vLLM would), but its cache holds 5 of the 32 sequences: the check warns, with the numbers.
    assert on_h100.can_start and not on_h100.fits
    assert on_h100.kv_tokens // 4096 == 5


def test_estimate_matches_what_vllm_reported_on_one_h200():
    # vLLM 0.25.1 on an H200: "Model loading took 64.76 GiB", "GPU KV cache size: 202,656 tokens";
    # Llama-2-7B bf16: 12.55 GiB, 235,632 tokens (benchmarks/results/gpu-h200-1gpu-memory.txt).
    fp8 = fit(H200, data_type="fp8")
    assert fp8.weights / GiB == pytest.approx(64.76, rel=0.01)
    assert fp8.kv_tokens == pytest.approx(202_656, rel=0.02)
    bf16 = fit(H200, model="meta-llama/Llama-2-7b-chat-hf", data_type="bfloat16")
    assert bf16.weights / GiB == pytest.approx(12.55, rel=0.01)
    assert bf16.kv_tokens == pytest.approx(235_632, rel=0.02)


def test_fp8_kv_cache_halves_the_bytes_per_token():
    auto = fit(H200, data_type="fp8")
    fp8_cache = fit(H200, data_type="fp8", engine_kwargs={"kv_cache_dtype": "fp8"})
    assert auto.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2 == 2 * fp8_cache.kv_bytes_per_token
    assert fp8_cache.kv_tokens == pytest.approx(2 * auto.kv_tokens, rel=0.001)


def test_online_quantization_peaks_one_16bit_projection_above_an_fp8_checkpoint(tmp_path: Path):
    config = json.loads((SHAPES / "llama2-70b.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    online = fit(H200, model=str(tmp_path), data_type="fp8")
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    checkpoint = fit(H200, model=str(tmp_path), data_type="fp8")
    assert online.weights == checkpoint.weights
    assert checkpoint.load_peak == checkpoint.weights and "FP8 checkpoint" in checkpoint.weights_label
    # gate and up of one layer in 16-bit (8192 x 2 x 28672 x 2 bytes), never the whole 16-bit model
    assert online.load_peak - online.weights == 8192 * 2 * 28672 * 2
    # an FP8 checkpoint is FP8 whatever data_type says
    assert fit(H200, model=str(tmp_path), data_type="auto").weights == checkpoint.weights


def test_an_unknown_model_uses_its_declared_parameter_count_or_is_not_estimated():
    assert fit(H200, model="acme/secret-model") is None
    declared = fit(H200, model="acme/secret-model", model_parameters=70, data_type="fp8")
    assert declared.weights == 70e9 and declared.kv_tokens is None and declared.can_start
    assert not fit(H200, model="acme/secret-model", model_parameters=70, data_type="bfloat16").can_start


def test_kv_heads_fewer_than_the_gpus_are_replicated():
    # Llama-2-70B has 8 KV heads: with 16-way tensor parallelism each GPU still keeps one.
    assert fit(H100, gpu_count=16).kv_bytes_per_token == 2 * fit(H100, gpu_count=8).kv_bytes_per_token
