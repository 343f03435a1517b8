"""The default model's portable layout (devtools/default_model.py) and what BigDL-LLM's old stack is given of it
(serving_app/engines/bigdl/compat.py), without a model: the file rewrites and refusals. The model itself is
exercised by tests/test_parity.py."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from devtools.default_model import _portable_config
from serving_app.engines.bigdl.compat import UnsupportedModelError, _join_merges, rope_theta


def test_portable_config_puts_rope_theta_where_every_transformers_reads_it() -> None:
    written = {"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "tie_word_embeddings": True,
               "quantization_config": {"quant_method": "gguf"}, "_model_name_or_path": "Smollm2 135M"}
    assert _portable_config(written) == {"rope_theta": 100000.0, "tie_word_embeddings": True}


def test_portable_config_refuses_a_rope_it_cannot_write() -> None:
    with pytest.raises(RuntimeError, match="llama3"):
        _portable_config({"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}})


def test_pair_merges_are_joined_for_tokenizers_0_13() -> None:
    data = {"model": {"type": "BPE", "merges": [["Ġ", "t"], ["i", "n"]]}}
    assert _join_merges(data) and data["model"]["merges"] == ["Ġ t", "i n"]
    assert not _join_merges(data)  # already joined: left as it is


def test_a_merge_with_a_space_is_refused_not_mangled() -> None:
    with pytest.raises(UnsupportedModelError, match="merge"):
        _join_merges({"model": {"type": "BPE", "merges": [["a b", "c"]]}})


@pytest.mark.parametrize(("config", "theta"), [
    ({"rope_theta": 100000.0}, 100000.0),
    ({"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}, 500000.0),
    ({}, 10000.0),
])
def test_rope_theta_is_read_from_either_form(config: dict, theta: float) -> None:
    assert rope_theta(SimpleNamespace(**config)) == theta


def test_a_rope_type_4_31_cannot_compute_is_refused() -> None:
    with pytest.raises(UnsupportedModelError, match="yarn"):
        rope_theta(SimpleNamespace(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}))


@pytest.mark.bigdl
@pytest.mark.skipif(importlib.util.find_spec("bigdl") is None, reason="BigDL-LLM's transformers 4.31 only")
@pytest.mark.parametrize(("field", "value", "message"), [
    ("head_dim", 32, "head_dim 32"), ("attention_bias", True, "attention_bias"), ("mlp_bias", True, "mlp_bias"),
])
def test_check_config_refuses_layouts_4_31_computes_wrongly(field: str, value, message: str) -> None:
    from transformers import LlamaConfig

    from serving_app.engines.bigdl.compat import check_config

    config = LlamaConfig(hidden_size=128, num_attention_heads=2, **{field: value})
    with pytest.raises(UnsupportedModelError, match=message):
        check_config(config)
