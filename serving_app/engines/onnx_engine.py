"""AMD EPYC engine: an ONNX int8 model made by `python -m serving_app.convert onnx`, run by ONNX Runtime through
Optimum's ORTModelForCausalLM, batched by `batching.BatchScheduler`.

Pointed at a plain Hugging Face model it refuses with the command that converts it, or, with
`engine_kwargs.convert: true`, converts it at startup into a cache beside the model (reused by later starts).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Optional

from .. import artifacts
from ..convert import ONNX_KIND, ConversionError, convert_command, convert_onnx, onnx_data_type
from ..serve_args import DataType, ServeArgs
from .batching import BatchingEngine, HFCausalLM, LoadedModel, eos_token_ids, resolve_max_model_len

logger = logging.getLogger("ray.serve")

# Fail at engine creation (create_engine names the right image), not minutes later in `start`.
for _library in ("optimum", "onnxruntime"):
    if importlib.util.find_spec(_library) is None:
        raise ImportError(f"{_library} is not installed")


class OnnxModelError(ValueError):
    """The engine's model_name is not something it can serve; the message says what to do."""


def resolve_onnx_model(model_name: str, data_type: str, convert: bool = False, cache_dir: Optional[str] = None,
                       quantization: str = "avx2") -> tuple[Path, dict[str, Any]]:
    """The converted directory to serve and its marker, converting first when `convert` allows it."""
    path = Path(model_name)
    quantize = data_type == "int8"
    out = f"{model_name.rstrip('/')}-onnx-{data_type}" if path.is_dir() else f"{path.name}-onnx-{data_type}"
    suggestion = convert_command(model_name, out, quantize)
    if path.is_dir():
        record, why = artifacts.inspect(path, {"kind": ONNX_KIND})
        if record is not None:
            if record.get("data_type") != data_type:
                raise OnnxModelError(
                    f"{path} holds a {record.get('data_type')} ONNX model but data_type is {data_type}: serve it "
                    f"with data_type {record.get('data_type')}, or convert again: {suggestion}")
            return path, record
        if (path / artifacts.MARKER).exists():
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
    if not convert:
        raise OnnxModelError(f"{what}. The onnxruntime engine serves models converted by: {suggestion} (then set "
                             f"model_name to that directory), or set engine_kwargs.convert: true to convert it when "
                             f"the replica starts")

    final = artifacts.cache_location(model_name, "onnx", f"{data_type}-{quantization}" if quantize else data_type,
                                     cache_dir)
    expect = {"kind": ONNX_KIND, "data_type": data_type, **artifacts.source_fingerprint(model_name)}
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


class OnnxRuntimeEngine(BatchingEngine):
    label = "onnxruntime"
    def __init__(self, args: ServeArgs):
        super().__init__(args)
        if args.data_type not in (DataType.INT8, DataType.FLOAT32):
            raise ValueError(f"the onnxruntime engine serves data_type int8 or float32, not {args.data_type.value!r}")
        self.model_dir: Optional[Path] = None

    def load(self) -> LoadedModel:
        import onnxruntime
        from optimum.onnxruntime import ORTModelForCausalLM
        from transformers import AutoTokenizer

        kwargs = self.args.engine_kwargs
        directory, record = resolve_onnx_model(
            self.args.model_name, onnx_data_type(self.args.data_type == DataType.INT8),
            convert=bool(kwargs.get("convert", False)), cache_dir=kwargs.get("onnx_cache_dir"),
            quantization=str(kwargs.get("quantization", "avx2")),
        )
        self.model_dir = directory
        session = onnxruntime.SessionOptions()
        # The replica's reserved CPUs, not every core of the node (ONNX Runtime's default).
        session.intra_op_num_threads = self.num_threads
        session.inter_op_num_threads = 1
        model = ORTModelForCausalLM.from_pretrained(
            directory, file_name=record["file_name"], use_cache=True, use_io_binding=False,
            provider="CPUExecutionProvider", session_options=session,
        )
        if not model.can_use_cache:
            raise OnnxModelError(f"{directory} was exported without a KV cache: convert it again")
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return LoadedModel(
            model=HFCausalLM(model, cache_objects=False),
            tokenizer=tokenizer,
            max_model_len=resolve_max_model_len(self.args, model.config),
            eos_token_ids=eos_token_ids(model.config, getattr(model, "generation_config", None), tokenizer),
            description=f"ONNX Runtime {record['data_type']} ({directory / record['file_name']})",
        )
