"""BigDL-LLM's `BatchModel`: the running rows' KV cache in Hugging Face's tuple layout (transformers' "legacy cache").

The cache is a tuple (one entry per layer) of tuples of tensors shaped [batch, heads, time, head_dim], rows
left-padded to a common width with an attention mask, and position ids from each row's own length, so a row's
output does not depend on its neighbours' lengths. `HFCausalLM` is the forward over that layout for any
transformers causal LM (BigDL-LLM's optimised models are ones). Only torch is imported here; transformers lazily.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Protocol, Sequence

import torch

Past = Any  # tuple[tuple[torch.Tensor, ...], ...]


class Forward(Protocol):
    """What `LeftPaddedBatch` runs: a forward over the tuple cache layout."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past: Optional[Past]) -> tuple[torch.Tensor, Past]:
        """input_ids/position_ids [batch, new], attention_mask [batch, past + new]: the last position's logits
        [batch, vocab] and the grown cache."""


class HFCausalLM:
    """A transformers causal LM (BigDL-LLM's optimised models are ones): its forward over the tuple cache layout."""

    def __init__(self, model: Any):
        self.model = model
        try:  # transformers >= 4.36 models take Cache objects; older ones (BigDL-LLM's 4.31) tuples
            from transformers.cache_utils import DynamicCache
        except ImportError:
            DynamicCache = None
        self._cache_class = DynamicCache
        try:
            parameters = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            parameters = {}
        # Only the last position's logits: a long prefill's full [batch, length, vocab] would be gigabytes.
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    def forward(self, input_ids, attention_mask, position_ids, past):
        if past is not None and self._cache_class is not None:
            if hasattr(self._cache_class, "from_legacy_cache"):  # transformers 4.36 - 4.x
                past = self._cache_class.from_legacy_cache(past)
            else:  # transformers 5
                past = self._cache_class(ddp_cache_data=past)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=past, use_cache=True, **self._keep)
        past = output.past_key_values
        if hasattr(past, "to_legacy_cache"):
            past = past.to_legacy_cache()
        elif hasattr(past, "layers"):
            past = tuple((layer.keys, layer.values) for layer in past.layers)
        return output.logits[:, -1, :].float(), past


# KV cache surgery: every result is a fresh contiguous tensor (BigDL-LLM appends in place into a strided view of
# a larger buffer, addressed from offset 0: a view of a view would be written wrongly).


def _map_past(past: Past, fn) -> Past:
    return tuple(tuple(fn(tensor) for tensor in layer) for layer in past)


def _select(past: Past, mask: torch.Tensor, rows: list[int]) -> tuple[Past, torch.Tensor]:
    """Keep `rows`, then drop leading columns that are padding in every remaining row."""
    index = torch.tensor(rows, dtype=torch.long)
    mask = mask.index_select(0, index)
    used = (mask.sum(dim=0) > 0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    mask = mask[:, start:].contiguous()
    past = _map_past(past, lambda t: t.index_select(0, index)[:, :, start:, :].clone(
        memory_format=torch.contiguous_format))
    return past, mask


def _pad_left(past: Past, mask: torch.Tensor, width: int) -> tuple[Past, torch.Tensor]:
    extra = width - mask.shape[1]
    if extra == 0:
        return past, mask
    mask = torch.cat([mask.new_zeros(mask.shape[0], extra), mask], dim=1)
    past = _map_past(past, lambda t: torch.cat(
        [t.new_zeros(t.shape[0], t.shape[1], extra, t.shape[3]), t], dim=2))
    return past, mask


def _concat(a: tuple[Past, torch.Tensor], b: tuple[Past, torch.Tensor]) -> tuple[Past, torch.Tensor]:
    width = max(a[1].shape[1], b[1].shape[1])
    (past_a, mask_a), (past_b, mask_b) = _pad_left(*a, width), _pad_left(*b, width)
    past = tuple(tuple(torch.cat([x, y], dim=0) for x, y in zip(la, lb)) for la, lb in zip(past_a, past_b))
    return past, torch.cat([mask_a, mask_b], dim=0)


class LeftPaddedBatch:
    """`BatchModel` over a Hugging Face style forward: rows left-padded to a common width, an attention mask, and
    position ids from each row's own length, so a row's output does not depend on its neighbours' lengths."""

    def __init__(self, model: Forward, pad_token_id: int = 0):
        self.model = model
        self.pad_token_id = pad_token_id
        self._past: Optional[Past] = None
        self._mask: Optional[torch.Tensor] = None

    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt):] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits, past = self.model.forward(ids, mask, positions, None)
        if self._mask is None:
            self._past, self._mask = past, mask
        else:
            self._past, self._mask = _concat((self._past, self._mask), (past, mask))
        return logits

    def decode(self, tokens: Sequence[int]) -> torch.Tensor:
        ids = torch.tensor(tokens, dtype=torch.long)[:, None]
        positions = self._mask.sum(dim=1, keepdim=True)
        mask = torch.cat([self._mask, self._mask.new_ones(len(tokens), 1)], dim=1)
        logits, self._past = self.model.forward(ids, mask, positions, self._past)
        self._mask = mask
        return logits

    def keep(self, rows: Sequence[int]) -> None:
        self._past, self._mask = _select(self._past, self._mask, list(rows))

    def reset(self) -> None:
        self._past, self._mask = None, None

    def cache_bytes(self) -> int:
        """Memory the cache holds: each tensor's whole storage, once (BigDL-LLM's are views of larger buffers)."""
        storages = {}
        for layer in self._past or ():
            for tensor in layer:
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())
