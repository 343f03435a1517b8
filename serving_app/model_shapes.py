"""A model's shapes (layers, heads, widths), from its `config.json` or from a table of known models, for the GPU-memory
fit estimate (serving_app/gpu_memory.py) and the FP8 decision (serving_app/engines/vllm_engine.py). Pure Python.

Only dense decoder-only transformers of the Llama family's layout are computed from a config (attention with
grouped-query heads, a gated MLP); any other layout (mixture of experts, ...) gives None, so the caller falls back to
a declared parameter count instead of a wrong shape.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

# quantization_config.quant_method of checkpoints that carry FP8 weights (vLLM reads them as they are).
FP8_CHECKPOINT_METHODS = ("fp8", "compressed-tensors", "modelopt", "fbgemm_fp8")
# Keys a config must have to be computed here.
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
# Keys that say the layout is not a dense gated-MLP decoder.
_OTHER_LAYOUTS = ("num_local_experts", "n_routed_experts", "num_experts", "moe_intermediate_size")


@dataclass(frozen=True)
class ModelShape:
    name: str  # where the shape came from, for messages: "config.json at ...", "shapes table: Llama-2-70B"
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    torch_dtype: str = "bfloat16"
    quantization: Optional[str] = None  # the checkpoint's own quantization method (config.json quantization_config)

    @property
    def fp8_checkpoint(self) -> bool:
        return self.quantization in FP8_CHECKPOINT_METHODS

    @property
    def linear_parameters(self) -> int:
        """Parameters of the attention and MLP projections: what FP8 quantizes (vLLM's LinearBase layers)."""
        q_o = 2 * self.hidden_size * self.num_attention_heads * self.head_dim
        k_v = 2 * self.hidden_size * self.num_kv_heads * self.head_dim
        mlp = 3 * self.hidden_size * self.intermediate_size  # gate, up, down
        return self.num_layers * (q_o + k_v + mlp)

    @property
    def other_parameters(self) -> int:
        """Embeddings, lm_head and norms: kept at the checkpoint's 16-bit type under FP8."""
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        norms = (2 * self.num_layers + 1) * self.hidden_size
        return embeddings + norms

    @property
    def parameters(self) -> int:
        return self.linear_parameters + self.other_parameters

    @property
    def largest_linear(self) -> int:
        """Parameters of the largest projection vLLM materializes at once (gate and up are one fused matrix)."""
        gate_up = 2 * self.hidden_size * self.intermediate_size
        qkv = self.hidden_size * (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_dim
        return max(gate_up, qkv)

    def kv_elements_per_token(self) -> int:
        """K and V of every layer for one token (all tensor-parallel ranks together)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim


def shape_from_config(config: dict[str, Any], name: str) -> Optional[ModelShape]:
    """The shape a Hugging Face config.json describes; None for a layout this module does not compute."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    if any(key in text for key in _OTHER_LAYOUTS) or not all(isinstance(text.get(k), int) for k in _REQUIRED):
        return None
    heads = text["num_attention_heads"]
    quantization = (config.get("quantization_config") or {}).get("quant_method")
    return ModelShape(
        name=name,
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_layers=text["num_hidden_layers"],
        num_attention_heads=heads,
        num_kv_heads=text.get("num_key_value_heads") or heads,
        head_dim=text.get("head_dim") or text["hidden_size"] // heads,
        vocab_size=text["vocab_size"],
        tie_word_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        max_position_embeddings=text.get("max_position_embeddings") or 4096,
        torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
        quantization=quantization,
    )


def local_config(model_name: str) -> Optional[dict[str, Any]]:
    """config.json of a model directory readable here (None for a hub id or a path on an unmounted volume)."""
    path = Path(model_name) / "config.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _llama(name: str, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
           max_len: int) -> ModelShape:
    return ModelShape(name=f"shapes table: {name}", hidden_size=hidden, intermediate_size=intermediate,
                      num_layers=layers, num_attention_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
                      vocab_size=vocab, max_position_embeddings=max_len,
                      torch_dtype="float16" if name.startswith("Llama-2") else "bfloat16")


# The published config.json of each (meta-llama on the hub); matched on the model name's last path component, so
# `meta-llama/Llama-2-70b-chat-hf` and `/models/Llama-2-70b-chat-hf` both resolve.
KNOWN_SHAPES: tuple[tuple[re.Pattern[str], ModelShape], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), shape) for pattern, shape in (
        (r"^llama-2-7b(-chat)?(-hf)?$", _llama("Llama-2-7B", 4096, 11008, 32, 32, 32, 32000, 4096)),
        (r"^llama-2-13b(-chat)?(-hf)?$", _llama("Llama-2-13B", 5120, 13824, 40, 40, 40, 32000, 4096)),
        (r"^llama-2-70b(-chat)?(-hf)?$", _llama("Llama-2-70B", 8192, 28672, 80, 64, 8, 32000, 4096)),
        (r"^(meta-)?llama-3-8b(-instruct)?$", _llama("Llama-3-8B", 4096, 14336, 32, 32, 8, 128256, 8192)),
        (r"^(meta-)?llama-3-70b(-instruct)?$", _llama("Llama-3-70B", 8192, 28672, 80, 64, 8, 128256, 8192)),
        (r"^(meta-)?llama-3\.1-8b(-instruct)?$", _llama("Llama-3.1-8B", 4096, 14336, 32, 32, 8, 128256, 131072)),
        (r"^(meta-)?llama-3\.1-70b(-instruct)?$", _llama("Llama-3.1-70B", 8192, 28672, 80, 64, 8, 128256, 131072)),
    ))


def known_shape(model_name: str) -> Optional[ModelShape]:
    leaf = model_name.rstrip("/").rsplit("/", 1)[-1]
    for pattern, shape in KNOWN_SHAPES:
        if pattern.match(leaf):
            return shape
    return None


def model_shape(model_name: str) -> Optional[ModelShape]:
    """The model's own config.json when readable here, else the table's entry for its name, else None."""
    config = local_config(model_name)
    if config is not None:
        return shape_from_config(config, f"config.json in {model_name}")
    return known_shape(model_name)
