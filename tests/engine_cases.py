"""How the API suite runs each engine on the generated tiny model: the serve args, and any model preparation."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

SERVED_MODEL = "tiny-llama"
MAX_MODEL_LEN = 2048


def _vllm(model_dir: Path, workdir: Path) -> dict[str, Any]:
    return {
        "model_name": str(model_dir),
        "target_device": "CPU",
        "max_model_len": MAX_MODEL_LEN,
        # A fixed KV cache: vLLM's CPU default reserves a fraction of all memory, too much on a shared CI box.
        "engine_kwargs": {"kv_cache_memory_bytes": 256 * 2**20},
    }


# engine -> (module that must import in this environment, serve args builder)
ENGINE_CASES: dict[str, tuple[str, Callable[[Path, Path], dict[str, Any]]]] = {
    "vllm": ("vllm", _vllm),
}


def available_engines() -> list[str]:
    return [name for name, (module, _) in ENGINE_CASES.items() if importlib.util.find_spec(module) is not None]


def serve_args(engine: str, model_dir: Path, workdir: Path) -> dict[str, Any]:
    _, build = ENGINE_CASES[engine]
    return {"served_model_name": SERVED_MODEL, "num_cpus": 1, **build(model_dir, workdir)}
