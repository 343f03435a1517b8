"""Generate a random LoRA adapter (PEFT's format) for a model, for tests and local mode (no training, no hub).

    python -m devtools.tiny_lora MODEL_DIR OUT_DIR [--rank 8] [--seed 0]

Writes adapter_config.json and adapter_model.safetensors, as `PeftModel.save_pretrained` does. PEFT starts LoRA's
B matrices at zero (an adapter that changes nothing); these are random and scaled up, so the adapted model's
output differs from the base model's, which is what a test of adapter serving needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def generate(model_dir: Path, out: Path, rank: int = 8, seed: int = 0) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=4 * rank, target_modules=list(TARGET_MODULES), lora_dropout=0.0,
                        init_lora_weights=False, task_type="CAUSAL_LM")
    adapted = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_" in name:
                parameter.mul_(4.0)
    out.mkdir(parents=True, exist_ok=True)
    adapted.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    print(generate(options.model_dir, options.out, options.rank, options.seed))


if __name__ == "__main__":
    main()
