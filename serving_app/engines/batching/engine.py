"""`BatchingEngine`: the `Engine` the CPU engines share. A subclass only loads its model (`load` returns a
`LoadedModel`); starting, serving through `BatchScheduler`, health and shutdown are here, with the helpers every
loader needs (end-of-sequence ids, a padding id, the context length)."""

from __future__ import annotations

import abc
import asyncio
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional, Sequence

import torch

from ...metrics import MetricLabels, process_sink
from ...serve_args import ServeArgs
from ..base import Engine, EngineDeadError, EngineStats, GenerationChunk, GenerationRequest
from ..options import BatchingOptions
from .metrics import NO_METRICS, BatchMetrics
from .scheduler import BatchModel, BatchScheduler

logger = logging.getLogger("ray.serve")

DEFAULT_BATCH_SIZE = 16  # when the serve args set no batch_size


@dataclass
class LoadedModel:
    model: BatchModel
    tokenizer: Any
    max_model_len: int
    eos_token_ids: list[int]
    description: str = ""


class BatchingEngine(Engine):
    """An engine whose model runs in this process, batched by `BatchScheduler`. Subclasses only load the model."""

    label = "cpu"

    def __init__(self, args: ServeArgs):
        super().__init__(args)
        self.options: BatchingOptions = args.options  # type: ignore[assignment]  # the registry's options model
        self.num_threads = self.options.threads(args.num_cpus)
        self.batch_size = args.batch_size or DEFAULT_BATCH_SIZE
        self._scheduler: Optional[BatchScheduler] = None
        self._loaded: Optional[LoadedModel] = None

    @abc.abstractmethod
    def load(self) -> LoadedModel:
        """Load the model (runs in a thread, so the replica's event loop stays responsive)."""

    def _load_with_threads(self) -> LoadedModel:
        # The replica reserved num_cpus: more compute threads than that only fight each other (and other replicas).
        torch.set_num_threads(self.num_threads)
        return self.load()

    async def start(self) -> None:
        loaded = await asyncio.to_thread(self._load_with_threads)
        sink = process_sink()
        metrics = NO_METRICS if sink is None else BatchMetrics(
            sink, MetricLabels.of(self.args), capacity=self.batch_size * loaded.max_model_len)
        scheduler = BatchScheduler(
            loaded.model, loaded.tokenizer,
            max_model_len=loaded.max_model_len,
            eos_token_ids=loaded.eos_token_ids,
            batch_size=self.batch_size,
            batch_timeout=self.args.batch_timeout,
            max_prefill_tokens=self.options.max_prefill_tokens,
            name=self.label,
            num_threads=self.num_threads,
            metrics=metrics,
        )
        scheduler.start()
        self._loaded, self._scheduler = loaded, scheduler
        logger.info("%s engine ready: %s, max_model_len %d, batch size %d", self.label, loaded.description,
                    loaded.max_model_len, scheduler.batch_size)

    @property
    def tokenizer(self) -> Any:
        return self._loaded.tokenizer if self._loaded else None

    @property
    def max_model_len(self) -> int:
        return self._loaded.max_model_len if self._loaded else 0

    def _running_scheduler(self) -> BatchScheduler:
        if self._scheduler is None:
            raise EngineDeadError(f"{self.label} engine is not started")
        return self._scheduler

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        return self._running_scheduler().generate(request)

    async def abort(self, request_id: str) -> None:
        if self._scheduler is not None:
            self._scheduler.abort(request_id)

    async def check_health(self) -> None:
        self._running_scheduler().check_health()

    def stats(self) -> EngineStats:
        if self._scheduler is None:
            return EngineStats(running_requests=0)
        return self._scheduler.stats()

    async def shutdown(self) -> None:
        if self._scheduler is not None:
            scheduler, self._scheduler = self._scheduler, None
            await asyncio.to_thread(scheduler.shutdown)


def pad_token_id(tokenizer: Any, eos_token_ids: Sequence[int]) -> int:
    """Any real token works (padding is masked); prefer the tokenizer's own pad token."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), *eos_token_ids):
        if candidate is not None:
            return int(candidate)
    return 0


def eos_token_ids(model_config: Any, generation_config: Any, tokenizer: Any) -> list[int]:
    """Every end-of-sequence id the generation config, model config and tokenizer name, each once."""
    ids: list[int] = []
    for source in (generation_config, model_config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and int(item) not in ids:
                ids.append(int(item))
    return ids


def resolve_max_model_len(args: ServeArgs, model_config: Any) -> int:
    """The serve args' max_model_len, which the model's position embeddings must cover; else the model's."""
    limit = None
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            limit = value
            break
    if args.max_model_len is None:
        if limit is None:
            raise ValueError("the model's config does not say its context length: set max_model_len")
        return limit
    if limit is not None and args.max_model_len > limit:
        raise ValueError(f"max_model_len {args.max_model_len} exceeds the model's context length ({limit} "
                         f"positions in its config)")
    return args.max_model_len
