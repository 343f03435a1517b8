"""Engines behind the one interface in `base.py`; each module imports its engine library only when created."""

from __future__ import annotations

import importlib

from ..serve_args import EngineName, ServeArgs
from .base import Engine

ENGINE_CLASSES = {
    EngineName.VLLM: "serving_app.engines.vllm_engine:VLLMEngine",
    EngineName.BIGDL: "serving_app.engines.bigdl_engine:BigDLEngine",
    EngineName.ONNXRUNTIME: "serving_app.engines.onnx_engine:OnnxRuntimeEngine",
}


def create_engine(args: ServeArgs) -> Engine:
    module_name, class_name = ENGINE_CLASSES[args.engine].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise RuntimeError(
            f"engine {args.engine.value!r} is not available in this environment ({error}); "
            f"run it in its own serving image (see requirements/)"
        ) from error
    return getattr(module, class_name)(args)
