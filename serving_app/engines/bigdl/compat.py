"""What BigDL-LLM's pinned stack (transformers 4.31, tokenizers 0.13) does not read in newer models' files, read here.

- Tokenizer: tokenizers >= 0.20 saves BPE merges as pairs (`[["Ġ", "t"], ...]`); 0.13 only parses the joined form
  (`"Ġ t"`) and fails on the whole file. The pairs are joined in memory (a merge whose parts contain a space cannot
  be joined, and is refused). Newer tokenizer classes (transformers 5's `TokenizersBackend`) and a template in
  `chat_template.jinja` are read from the files directly.
- Configuration: 4.31's Llama has no `rope_theta` (its RoPE base is fixed at 10000) and no `head_dim`,
  `attention_bias` or `mlp_bias`. A RoPE base is applied to every layer's rotary embedding (after loading: the
  low-bit cache stores the 10000-base frequencies); a layout 4.31 cannot compute is refused, naming the field;
  any other field it does not know is logged, never dropped unnoticed.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger("ray.serve")

DEFAULT_ROPE_THETA = 10000.0
# Fields newer configs carry that 4.31 has no use for and that change nothing it computes.
HARMLESS = {"architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path", "initializer_range",
            "attention_dropout", "pretraining_tp", "use_cache", "model_type", "rope_parameters", "rope_theta",
            "head_dim", "attention_bias", "mlp_bias", "unk_token_id"}


class UnsupportedModelError(ValueError):
    """The model needs something BigDL-LLM's transformers 4.31 cannot compute."""


# --- tokenizer


def _join_merges(tokenizer_json: dict[str, Any]) -> bool:
    """Turn pair merges into joined strings in place; True when anything changed."""
    model = tokenizer_json.get("model") or {}
    merges = model.get("merges")
    if model.get("type") != "BPE" or not merges or not isinstance(merges[0], list):
        return False
    joined = []
    for pair in merges:
        if len(pair) != 2 or any(" " in part for part in pair):
            raise UnsupportedModelError(f"tokenizer.json has the BPE merge {pair!r}, which tokenizers 0.13's "
                                        f"'a b' merge format cannot express")
        joined.append(f"{pair[0]} {pair[1]}")
    model["merges"] = joined
    return True


def _chat_template(directory: Path, tokenizer_config: dict[str, Any]) -> Optional[str]:
    template = tokenizer_config.get("chat_template")
    jinja = directory / "chat_template.jinja"
    if not template and jinja.is_file():
        template = jinja.read_text()
    return template


def load_tokenizer(model_name: str, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer under transformers 4.31 / tokenizers 0.13, with its chat template."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    directory = Path(model_name)
    tokenizer_file = directory / "tokenizer.json"
    if not tokenizer_file.is_file():  # a hub id or a slow-tokenizer model: 4.31 reads those itself
        return AutoTokenizer.from_pretrained(model_name, trust_remote_code=trust_remote_code)
    config_file = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    data = json.loads(tokenizer_file.read_text())
    changed = _join_merges(data)
    template = _chat_template(directory, tokenizer_config)
    known_class = tokenizer_config.get("tokenizer_class") not in (None, "TokenizersBackend")
    if not changed and known_class and template == tokenizer_config.get("chat_template"):
        return AutoTokenizer.from_pretrained(model_name, trust_remote_code=trust_remote_code)
    from tokenizers import Tokenizer

    if changed:
        logger.info("tokenizer.json of %s has pair merges: joined for tokenizers 0.13", model_name)
    special = {key: tokenizer_config[key] for key in ("bos_token", "eos_token", "unk_token", "pad_token")
               if isinstance(tokenizer_config.get(key), str)}
    extra = {"chat_template": template} if template else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        model_max_length=tokenizer_config.get("model_max_length", int(1e30)),
        clean_up_tokenization_spaces=tokenizer_config.get("clean_up_tokenization_spaces", False),
        **special, **extra,
    )


# --- configuration


def rope_theta(config: Any) -> float:
    """The RoPE base a config asks for (transformers 4.x's `rope_theta`, or 5's `rope_parameters`)."""
    parameters = getattr(config, "rope_parameters", None) or {}
    theta = getattr(config, "rope_theta", None) or parameters.get("rope_theta")
    rope_type = parameters.get("rope_type", "default")
    if rope_type != "default":
        raise UnsupportedModelError(f"config.json: rope_parameters.rope_type {rope_type!r} is not computed by "
                                    f"transformers 4.31 (BigDL-LLM's); only plain RoPE or rope_scaling "
                                    f"linear/dynamic")
    return float(theta) if theta else DEFAULT_ROPE_THETA


def check_config(config: Any) -> None:
    """Refuse what 4.31's Llama would compute wrongly; log fields it does not know."""
    if getattr(config, "model_type", None) != "llama":
        return
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim != config.hidden_size // config.num_attention_heads:
        raise UnsupportedModelError(f"config.json: head_dim {head_dim} differs from hidden_size / "
                                    f"num_attention_heads ({config.hidden_size // config.num_attention_heads}), "
                                    f"which transformers 4.31's Llama always uses")
    for name in ("attention_bias", "mlp_bias"):
        if getattr(config, name, False):
            raise UnsupportedModelError(f"config.json: {name} is true; transformers 4.31's Llama has no biases")
    rope_theta(config)
    from transformers import LlamaConfig, PretrainedConfig

    known = set(inspect.signature(LlamaConfig.__init__).parameters) | set(PretrainedConfig().to_dict()) | HARMLESS
    unknown = sorted(set(config.to_dict()) - known)
    if unknown:
        logger.warning("config.json fields transformers 4.31 does not read (not applied): %s", ", ".join(unknown))


def apply_rope_theta(model: Any) -> float:
    """Rebuild every layer's rotary embedding with the config's RoPE base (4.31 builds them with 10000)."""
    theta = rope_theta(model.config)
    if theta == DEFAULT_ROPE_THETA:
        return theta
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or not all(hasattr(layer.self_attn, "rotary_emb") for layer in layers):
        raise UnsupportedModelError(f"config.json asks for rope_theta {theta}, but this {type(model).__name__} "
                                    f"has no per-layer rotary embedding to apply it to")
    for layer in layers:
        old = layer.self_attn.rotary_emb
        scaling = {"scaling_factor": old.scaling_factor} if hasattr(old, "scaling_factor") else {}
        layer.self_attn.rotary_emb = type(old)(old.dim, max_position_embeddings=old.max_position_embeddings,
                                               base=theta, device=old.inv_freq.device, **scaling)
    logger.info("applied rope_theta %s to %d layers (transformers 4.31 fixes it at 10000)", theta, len(layers))
    return theta
