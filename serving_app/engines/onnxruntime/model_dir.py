"""The converted model directory the ONNX Runtime engine serves, from its model_name.

A directory `convert.py` wrote (marker checked: data type, KV cache layout) is served as it is. Anything else is
refused with the command that converts it, or, with `engine_kwargs.convert: true`, converted at startup into a
cache beside the model (`serving_app.artifacts`: keyed by source, data type and int8 target; reused by later
starts and by replicas starting together).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ... import artifacts
from ..options import OnnxRuntimeOptions
from .attention_rewrite import GRAPH_REWRITE, KV_CACHE_LAYOUT
from .convert import ONNX_KIND, ConversionError, convert_command, convert_onnx, resolve_quantization

logger = logging.getLogger("ray.serve")


class OnnxModelError(ValueError):
    """The engine's model_name is not something it can serve; the message says what to do."""


# What the marker of a conversion by this code says; tools caching conversions reuse only those (an older one
# still serves, without what the rewrite gained since).
CURRENT_CONVERSION = {"kind": ONNX_KIND, "kv_cache": KV_CACHE_LAYOUT, "graph": GRAPH_REWRITE}


def is_current_conversion(directory: Path) -> bool:
    """Whether `directory` is a complete conversion by this code's rewrite."""
    return artifacts.inspect(Path(directory), CURRENT_CONVERSION)[0] is not None


def resolve_onnx_model(model_name: str, data_type: str, options: OnnxRuntimeOptions) -> tuple[Path, dict[str, Any]]:
    """The converted directory to serve and its marker, converting first when `options.convert` allows it."""
    path = Path(model_name)
    quantize = data_type == "int8"
    out = f"{model_name.rstrip('/')}-onnx-{data_type}" if path.is_dir() else f"{path.name}-onnx-{data_type}"
    suggestion = convert_command(model_name, out, quantize)
    if path.is_dir():
        record, why = artifacts.inspect(path, {"kind": ONNX_KIND})
        if record is not None:
            if record.get("kv_cache") != KV_CACHE_LAYOUT:
                raise OnnxModelError(
                    f"{path} was converted by an older serving_app.convert (its attention copies the KV cache every "
                    f"step): convert again: {convert_command(model_name, str(path), quantize)} --force")
            if record.get("data_type") != data_type:
                raise OnnxModelError(
                    f"{path} holds a {record.get('data_type')} ONNX model but data_type is {data_type}: serve it "
                    f"with data_type {record.get('data_type')}, or convert again: {suggestion}")
            return path, record
        # A sealed directory of another kind (e.g. devtools' converted default model) is a model, not a damaged
        # ONNX conversion.
        other_kind = (artifacts.inspect(path)[0] or {}).get("kind") not in (None, ONNX_KIND)
        if (path / artifacts.MARKER).exists() and not other_kind:
            raise OnnxModelError(f"{path} is a damaged or partial ONNX conversion ({why}): convert again: "
                                 f"{convert_command(model_name, str(path), quantize)} --force")
        if any(path.glob("*.onnx")):
            raise OnnxModelError(f"{path} holds ONNX files not produced by serving_app.convert (no "
                                 f"{artifacts.MARKER}): convert the original model: "
                                 f"python -m serving_app.convert onnx --model <hf model> --out <dir>")
        if not (path / "config.json").is_file():
            raise OnnxModelError(f"{path} is neither an ONNX model from serving_app.convert nor a Hugging Face model")
        what = f"{path} is a Hugging Face model directory, not an ONNX model"
    elif path.exists():
        raise OnnxModelError(f"{path} is not a directory")
    else:
        what = f"{model_name} is not a local directory (hub ids must be converted first)"
    if not options.convert:
        raise OnnxModelError(f"{what}. The onnxruntime engine serves models converted by: {suggestion} (then set "
                             f"model_name to that directory), or set engine_kwargs.convert: true to convert it when "
                             f"the replica starts")

    quantization = resolve_quantization(options.quantization)  # this node's CPU: it serves what it converts
    final = artifacts.cache_location(model_name, "onnx", f"{data_type}-{quantization}" if quantize else data_type,
                                     options.onnx_cache_dir)
    expect = {**CURRENT_CONVERSION, "data_type": data_type, **artifacts.source_fingerprint(model_name)}
    record, why = artifacts.inspect(final, expect)
    if record is not None:
        logger.info("serving the ONNX conversion of %s cached at %s", model_name, final)
        return final, record
    logger.info("converting %s to ONNX %s into %s (%s)", model_name, data_type, final, why)
    try:
        # overwrite: whatever is there is stale or partial (publish keeps a complete one another replica made).
        convert_onnx(model_name, final, quantize=quantize, quantization=quantization, overwrite=True)
    except ConversionError as error:
        raise OnnxModelError(f"converting {model_name} at startup failed: {error}") from error
    record, why = artifacts.inspect(final, expect)
    if record is None:
        raise OnnxModelError(f"the ONNX conversion in {final} is not usable after converting: {why}")
    return final, record
