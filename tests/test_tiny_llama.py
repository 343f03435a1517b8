"""The generated models' shapes (devtools.tiny_llama.SIZES): what the engines and the issue 3 benchmark need."""

import pytest

from devtools.tiny_llama import SIZES, train_tokenizer


def parameters(shape: dict, vocab: int) -> int:
    """A Llama's parameter count from its shape (untied embeddings and lm_head, RMSNorm weights, no biases)."""
    hidden, layers = shape["hidden_size"], shape["num_hidden_layers"]
    heads = shape["num_attention_heads"]
    kv_heads = shape.get("num_key_value_heads", heads)
    head_dim = hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * hidden * shape["intermediate_size"]
    return layers * (attention + mlp + 2 * hidden) + 2 * vocab * hidden + hidden


@pytest.mark.parametrize("size", sorted(SIZES))
def test_heads_fit_the_engines(size):
    shape = SIZES[size]
    heads = shape["num_attention_heads"]
    assert shape["hidden_size"] % heads == 0
    # vLLM's CPU attention rejects head_dim 16; 64 is what every size here uses.
    assert shape["hidden_size"] // heads == 64
    assert heads % shape.get("num_key_value_heads", heads) == 0


@pytest.mark.parametrize("size", ["100m", "100m-gqa"])
def test_benchmark_models_have_about_100m_parameters(size):
    # The model's vocabulary is what the tokenizer learns from the small corpus (generate() sizes it so), fewer
    # than vocab_size asks for.
    vocab = train_tokenizer(SIZES[size]["vocab_size"]).get_vocab_size()
    assert 80e6 <= parameters(SIZES[size], vocab) <= 120e6


def test_grouped_query_shape_differs_from_100m_only_in_attention_heads_and_mlp():
    mha, gqa = SIZES["100m"], SIZES["100m-gqa"]
    assert gqa["num_key_value_heads"] * 3 == gqa["num_attention_heads"] == mha["num_attention_heads"]
    for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
        assert gqa[key] == mha[key]
