"""How the API suite runs each registry engine on the generated tiny model: the serve args, and any model
preparation. Whether an engine can run here is the registry's `probe_module`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from serving_app.engines.registry import REGISTRY, EngineName, spec

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


def _bigdl(model_dir: Path, workdir: Path) -> dict[str, Any]:
    # The low-bit cache goes beside the model (the default): the first start builds it.
    return {
        "model_name": str(model_dir),
        "target_device": "INTEL",
        "data_type": "int8",
        "max_model_len": MAX_MODEL_LEN,
        "batch_size": 16,  # the concurrency test needs at least 8 requests in one batch
    }


def convert_to_onnx(model_dir: Path, out: Path, *extra: str) -> Path:
    """Run the conversion command the way an operator does; returns `out`."""
    subprocess.run([sys.executable, "-m", "serving_app.convert", "onnx", "--model", str(model_dir),
                    "--out", str(out), *extra], check=True, capture_output=True, timeout=600)
    return out


def _onnxruntime(model_dir: Path, workdir: Path) -> dict[str, Any]:
    return {
        "model_name": str(convert_to_onnx(model_dir, workdir / "tiny-llama-onnx-int8")),
        "target_device": "AMD",
        "data_type": "int8",
        "max_model_len": MAX_MODEL_LEN,
        "batch_size": 16,
    }


# engine -> its serve args on (generated model, a work directory)
ENGINE_CASES: dict[EngineName, Callable[[Path, Path], dict[str, Any]]] = {
    EngineName.VLLM: _vllm,
    EngineName.BIGDL: _bigdl,
    EngineName.ONNXRUNTIME: _onnxruntime,
}


def installed(engine: EngineName) -> bool:
    """find_spec of a dotted name imports its parent, which raises when the parent package is absent."""
    try:
        return importlib.util.find_spec(spec(engine).probe_module) is not None
    except ModuleNotFoundError:
        return False


def available_engines() -> list[EngineName]:
    return [engine for engine in REGISTRY if installed(engine)]


def serve_args(engine: EngineName, model_dir: Path, workdir: Path) -> dict[str, Any]:
    return {"served_model_name": SERVED_MODEL, "num_cpus": 1, **ENGINE_CASES[EngineName(engine)](model_dir, workdir)}
