"""What our vLLM engine hands AsyncEngineArgs (engine_arguments, no vLLM needed): FP8 weights from a 16-bit or an FP8
checkpoint, the FP8 KV cache, and the conflicts refused before anything starts."""

from __future__ import annotations

import pytest

from serving_app.engines.vllm_engine import engine_arguments
from serving_app.enums import DataType
from serving_app.serve_args import parse_serve_args

LLAMA = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
         "vocab_size": 32000, "torch_dtype": "float16"}


def arguments(config=None, **args):
    return engine_arguments(parse_serve_args({"model_name": "m", **args}), config)


def test_fp8_quantizes_a_16bit_checkpoint_while_loading_and_keeps_its_16bit_type_elsewhere():
    args = arguments(LLAMA, data_type="fp8")
    assert (args["quantization"], args["dtype"]) == ("fp8", "auto")
    assert arguments(None, data_type="float8")["quantization"] == "fp8"  # config unreadable: a 16-bit checkpoint


@pytest.mark.parametrize("method", ["fp8", "compressed-tensors"])
def test_an_fp8_checkpoint_loads_as_it_is(method: str):
    args = arguments({**LLAMA, "quantization_config": {"quant_method": method}}, data_type="fp8")
    assert "quantization" not in args and args["dtype"] == "auto"


def test_fp8_of_an_int4_checkpoint_is_refused():
    with pytest.raises(ValueError, match="data_type: fp8, but m is a 'awq' checkpoint"):
        arguments({**LLAMA, "quantization_config": {"quant_method": "awq"}}, data_type="fp8")


def test_fp8_and_an_explicit_quantization_are_refused_together():
    with pytest.raises(ValueError, match="engine_kwargs.quantization: data_type fp8 chooses"):
        arguments(LLAMA, data_type="fp8", engine_kwargs={"quantization": "fp8"})


def test_16bit_data_types_pass_through_without_quantization():
    args = arguments(LLAMA, data_type="bf16", batch_size=64)
    assert (args["dtype"], args["max_num_seqs"]) == ("bfloat16", 64) and "quantization" not in args


def test_fp8_kv_cache_is_a_typed_option():
    assert arguments(LLAMA, engine_kwargs={"kv_cache_dtype": "fp8"})["kv_cache_dtype"] == "fp8"
    assert "kv_cache_dtype" not in arguments(LLAMA)  # unset: vLLM's own default
    with pytest.raises(ValueError, match=r"engine_kwargs.kv_cache_dtype: 'int8' is not one of auto, fp8"):
        arguments(LLAMA, engine_kwargs={"kv_cache_dtype": "int8"})


def test_fp8_is_a_vllm_data_type_only():
    assert parse_serve_args({"model_name": "m", "data_type": "fp8"}).data_type == DataType.FP8
    with pytest.raises(ValueError, match="'fp8' is not supported by engine 'bigdl'"):
        parse_serve_args({"model_name": "m", "target_device": "INTEL", "data_type": "fp8"})
