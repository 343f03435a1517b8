"""The ONNX Runtime engine's `BatchModel`: the running rows' KV cache in one preallocated buffer per layer, which
the rewritten graph (`attention_rewrite.py`) updates in place."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .model_dir import OnnxModelError

CACHE_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
                "tensor(uint8)": np.uint8}


class SharedKVCacheModel:
    """`batching.scheduler.BatchModel` over an ONNX session whose attention updates its KV cache in place.

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

    def cache_bytes(self) -> int:
        """Memory the preallocated buffers hold (all batch_size slots, however many rows run)."""
        return sum(buffer.nbytes for buffer in self.buffers.values())
