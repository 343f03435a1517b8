"""AMD EPYC engine: an ONNX int8 model made by `python -m serving_app.convert onnx`, run by ONNX Runtime with its KV
cache in one preallocated buffer per layer that the graph updates in place (`serving_app.onnx_attention`), batched by
`batching.BatchScheduler`.

Pointed at a plain Hugging Face model it refuses with the command that converts it, or, with
`engine_kwargs.convert: true`, converts it at startup into a cache beside the model (reused by later starts).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .. import artifacts
from ..convert import (ONNX_KIND, ConversionError, convert_command, convert_onnx, onnx_data_type,
                       resolve_quantization)
from ..onnx_attention import KV_CACHE_LAYOUT
from ..serve_args import DataType, ServeArgs
from .options import OnnxRuntimeOptions
from .batching.engine import BatchingEngine, LoadedModel, eos_token_ids, pad_token_id, resolve_max_model_len

logger = logging.getLogger("ray.serve")

# Fail at engine creation (create_engine names the right image), not minutes later in `start`.
for _library in ("optimum", "onnxruntime"):
    if importlib.util.find_spec(_library) is None:
        raise ImportError(f"{_library} is not installed")


class OnnxModelError(ValueError):
    """The engine's model_name is not something it can serve; the message says what to do."""


def resolve_onnx_model(model_name: str, data_type: str, convert: bool = False, cache_dir: Optional[str] = None,
                       quantization: str = "auto") -> tuple[Path, dict[str, Any]]:
    """The converted directory to serve and its marker, converting first when `convert` allows it."""
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

    quantization = resolve_quantization(quantization)  # this node's CPU: it serves what it converts
    final = artifacts.cache_location(model_name, "onnx", f"{data_type}-{quantization}" if quantize else data_type,
                                     cache_dir)
    expect = {"kind": ONNX_KIND, "data_type": data_type, "kv_cache": KV_CACHE_LAYOUT,
              **artifacts.source_fingerprint(model_name)}
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


CACHE_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
                "tensor(uint8)": np.uint8}


class SharedKVCacheModel:
    """`batching.BatchModel` over an ONNX session whose attention updates its KV cache in place.

    Each layer's key and value live in one buffer [batch_size, kv_heads, capacity, head_dim]; row r of the running
    batch is slot r, its tokens at positions 0..length-1. A step binds the running slots (a contiguous prefix of
    the buffer) as both past and present, so nothing is copied; new rows are prefilled straight into the free slots
    after them. Rows leave by moving the later rows' cached tokens down. The time axis grows (by doubling, up to
    max_model_len) when a row needs it, so short conversations do not pay for the longest one possible."""

    def __init__(self, session: Any, *, max_rows: int, max_len: int, pad_token_id: int):
        self.session = session
        self.max_rows = max_rows
        self.max_len = max_len
        self.pad_token_id = pad_token_id
        inputs = {i.name: i for i in session.get_inputs()}
        self.cache_names = [name for name in inputs if name.startswith("past_key_values.")]
        missing = [name for name in ("input_ids", "attention_mask", "position_ids") if name not in inputs]
        missing += [] if self.cache_names else ["past_key_values.*"]
        missing += [] if any(o.name == "logits" for o in session.get_outputs()) else ["logits (output)"]
        if missing:
            raise OnnxModelError(f"the ONNX model lacks {', '.join(missing)}: convert it again with "
                                 f"python -m serving_app.convert onnx")
        shape = inputs[self.cache_names[0]].shape
        self.cache_dtype = CACHE_DTYPES[inputs[self.cache_names[0]].type]
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        self.lengths: list[int] = []  # cached tokens per running row
        self.capacity = 0
        self.buffers: dict[str, np.ndarray] = {}

    def reserve(self, tokens: int) -> None:
        """Room for rows of `tokens` tokens (keeping what the running rows cached)."""
        if tokens <= self.capacity:
            return
        if tokens > self.max_len:
            raise ValueError(f"{tokens} tokens exceed max_model_len {self.max_len}")
        capacity = min(self.max_len, max(64, 1 << (tokens - 1).bit_length()))
        rows, used = len(self.lengths), max(self.lengths, default=0)
        for name in self.cache_names:
            grown = np.zeros((self.max_rows, self.kv_heads, capacity, self.head_dim), dtype=self.cache_dtype)
            if name in self.buffers and rows:
                grown[:rows, :, :used] = self.buffers[name][:rows, :, :used]
            self.buffers[name] = grown
        self.capacity = capacity

    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, first_slot: int) -> torch.Tensor:
        """One forward over rows first_slot.. (their slots bound in place): each row's last-position logits."""
        import onnxruntime

        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_cpu_input("position_ids", positions)
        for name in self.cache_names:
            slots = self.buffers[name][first_slot:first_slot + len(ids)]  # contiguous: the slot axis is outermost
            binding.bind_ortvalue_input(name, onnxruntime.OrtValue.ortvalue_from_numpy(slots))
            binding.bind_output(name.replace("past_key_values.", "present."), "cpu", 0, slots.dtype,
                                list(slots.shape), slots.ctypes.data)
        binding.bind_output("logits")
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[-1].numpy()  # [rows, 1, vocab]: the graph keeps the last position only
        return torch.from_numpy(np.ascontiguousarray(logits[:, -1], dtype=np.float32))

    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        first, width = len(self.lengths), max(len(p) for p in prompts)
        if first + len(prompts) > self.max_rows:
            raise ValueError(f"{first + len(prompts)} rows exceed the cache's {self.max_rows} slots")
        self.reserve(width)
        ids = np.full((len(prompts), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(prompts), width), dtype=np.int64)
        for i, prompt in enumerate(prompts):  # right-padded: each row's tokens start at slot position 0
            ids[i, :len(prompt)] = prompt
            mask[i, :len(prompt)] = 1
        positions = np.broadcast_to(np.arange(width, dtype=np.int64), ids.shape).copy()
        logits = self._run(ids, mask, positions, first)
        self.lengths.extend(len(p) for p in prompts)
        return logits

    def decode(self, tokens: Sequence[int]) -> torch.Tensor:
        lengths = np.array(self.lengths, dtype=np.int64)
        width = int(lengths.max()) + 1
        self.reserve(width)
        mask = (np.arange(width)[None, :] <= lengths[:, None]).astype(np.int64)
        logits = self._run(np.array(tokens, dtype=np.int64)[:, None], mask, lengths[:, None].copy(), 0)
        self.lengths = [n + 1 for n in self.lengths]
        return logits

    def keep(self, rows: Sequence[int]) -> None:
        for slot, row in enumerate(rows):  # ascending, so a source is never overwritten before it moves
            if slot != row:
                used = self.lengths[row]
                for buffer in self.buffers.values():
                    buffer[slot, :, :used] = buffer[row, :, :used]
        self.lengths = [self.lengths[row] for row in rows]

    def reset(self) -> None:
        self.lengths = []


class OnnxRuntimeEngine(BatchingEngine):
    label = "onnxruntime"
    def __init__(self, args: ServeArgs):
        super().__init__(args)
        self.options: OnnxRuntimeOptions = args.options  # type: ignore[assignment]
        self.model_dir: Optional[Path] = None

    def load(self) -> LoadedModel:
        import onnxruntime
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        directory, record = resolve_onnx_model(
            self.args.model_name, onnx_data_type(self.args.data_type == DataType.INT8),
            convert=self.options.convert, cache_dir=self.options.onnx_cache_dir,
            quantization=self.options.quantization,
        )
        self.model_dir = directory
        options = onnxruntime.SessionOptions()
        # The replica's reserved CPUs, not every core of the node (ONNX Runtime's default).
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(directory / record["file_name"]), options,
                                               providers=["CPUExecutionProvider"])
        config = AutoConfig.from_pretrained(directory)
        try:
            generation_config = GenerationConfig.from_pretrained(directory)
        except OSError:  # optional: the model's config says the eos too
            generation_config = None
        tokenizer = AutoTokenizer.from_pretrained(directory)
        eos = eos_token_ids(config, generation_config, tokenizer)
        max_model_len = resolve_max_model_len(self.args, config)
        model = SharedKVCacheModel(session, max_rows=self.batch_size, max_len=max_model_len,
                                   pad_token_id=pad_token_id(tokenizer, eos))
        return LoadedModel(
            model=model,
            tokenizer=tokenizer,
            max_model_len=max_model_len,
            eos_token_ids=eos,
            description=f"ONNX Runtime {record['data_type']} ({directory / record['file_name']})",
        )
