"""AMD EPYC engine: an ONNX int8 model made by `python -m serving_app.convert onnx`, run by ONNX Runtime with its KV
cache in one preallocated buffer per layer that the graph updates in place (`kv_cache.SharedKVCacheModel`),
batched by `batching.scheduler.BatchScheduler`. Which directory it serves (or converts at startup) is
`model_dir.resolve_onnx_model`'s decision.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from ...serve_args import DataType, ServeArgs
from ..batching.engine import BatchingEngine, LoadedModel, eos_token_ids, pad_token_id, resolve_max_model_len
from ..options import OnnxRuntimeOptions
from .convert import onnx_data_type
from .kv_cache import SharedKVCacheModel
from .model_dir import resolve_onnx_model

# Fail at engine creation (create_engine names the right image), not minutes later in `start`.
for _library in ("optimum", "onnxruntime"):
    if importlib.util.find_spec(_library) is None:
        raise ImportError(f"{_library} is not installed")


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
            self.args.model_name, onnx_data_type(self.args.data_type == DataType.INT8), self.options)
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
