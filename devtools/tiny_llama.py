"""Generate a small random Llama and a trained tokenizer, for tests, local mode and benchmarks (no hub access).

    python -m devtools.tiny_llama OUT_DIR [--size tiny|tiny-gqa|100m|100m-gqa] [--seed 0]

Writes what a hub snapshot has: config.json, safetensors weights, tokenizer.json, tokenizer_config.json (with a
chat template). The tokenizer is trained here by the installed `tokenizers`, so every environment (tokenizers
0.13 for BigDL-LLM included) gets a file it can read. Its output is random text.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

# head_dim 64: vLLM's CPU attention rejects 16.
SIZES = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, vocab_size=512),
    # Grouped-query attention (2 query heads per key/value head), as Llama-2-70B and Llama-3 have.
    "tiny-gqa": dict(hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512),
    "100m": dict(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, vocab_size=8192
    ),
    # The same width and depth shaped like Llama 3 (3 query heads per key/value head, as Llama-3.2-3B; MLP 3.3x
    # wide): a third of 100m's KV cache per token. Real models' cache is smaller still against their weights.
    "100m-gqa": dict(
        hidden_size=768, intermediate_size=2560, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=4, vocab_size=8192
    ),
}

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def _corpus() -> list[str]:
    words = (
        "the a an of to in is was for on that with as by at from it this be are or have not but they which one "
        "you all were her she there would their we him been has when who will more no if out so said what up its "
        "about into than them can only other new some could time these two may then do first any my now such like "
        "our over man me even most made after also did many before must through back years where much your way "
        "model serve token request batch engine cluster node ray kubernetes llama cpu gpu memory stream answer"
    ).split()
    lines = []
    for i in range(2000):
        lines.append(" ".join(words[(i * 7 + j * 13) % len(words)] for j in range(12)) + ".")
    lines += ["0123456789 !?,.;:'\"()[]{}<>/\\|-_=+*&^%$#@~`"] * 10
    return lines


def train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    return tokenizer


def generate(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write the model into out_dir atomically (a finished directory or none)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    shape = SIZES[size]
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=train_tokenizer(shape["vocab_size"]),
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
        )
        tokenizer.save_pretrained(staging)
        # transformers 4.31 (BigDL-LLM's) predates chat templates: write it into the config ourselves.
        config_path = staging / "tokenizer_config.json"
        tokenizer_config = json.loads(config_path.read_text())
        tokenizer_config["chat_template"] = CHAT_TEMPLATE
        config_path.write_text(json.dumps(tokenizer_config, indent=2))

        torch.manual_seed(seed)
        config = LlamaConfig(
            **{"num_key_value_heads": shape["num_attention_heads"], **shape, "vocab_size": len(tokenizer)},
            max_position_embeddings=2048,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
            torch_dtype="float32",
        )
        model = LlamaForCausalLM(config)
        model.save_pretrained(staging, safe_serialization=True)
        # mkdtemp makes owner-only files; a shared model volume is read by other users.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    print(generate(options.out_dir, options.size, options.seed))


if __name__ == "__main__":
    main()
