"""The worker thread that batches the CPU engines' requests, and `BatchModel`, the model side it drives.

Requests wait in a queue; the worker takes up to `batch_size` of them (when idle it waits at most `batch_timeout`
after the first for more), prefills them together and then decodes the whole batch one token per step. Between
steps the batch changes shape: finished and aborted requests leave at once (their rows are dropped from the KV
cache), and waiting requests join (prefilled, then merged into the cache). Every request has its own stream,
sampling options, generator and token budget (`sequence.Row`); the `BatchModel` keeps each row's output
independent of its neighbours.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
import threading
import time
from typing import Any, AsyncIterator, Optional, Protocol, Sequence

import torch

from ..base import EngineDeadError, EngineStats, GenerationChunk, GenerationRequest
from .metrics import NO_METRICS, Observer
from .sampling import sample
from .sequence import Row, Stream

logger = logging.getLogger("ray.serve")


class BatchModel(Protocol):
    """A model together with the KV cache of the running batch. Rows are numbered 0..n-1 in the order the
    scheduler keeps them; the scheduler calls these from its worker thread only."""

    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run `prompts` as new rows after the running ones: each prompt's last-position logits [k, vocab]. If it
        raises, the running rows are as they were."""

    def decode(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed one token to every running row (in row order): logits [rows, vocab]."""

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these running rows (ascending indices); they become rows 0..len(rows)-1."""

    def reset(self) -> None:
        """Forget every row (after a failed step, whose cache state is unknown)."""

    # Optional: `cache_bytes() -> int`, the bytes the KV cache holds now (the serving_kv_cache_bytes metric).


class BatchScheduler:
    """Owns the worker thread and the running batch. `generate`, `abort` and `stats` are called from the
    replica's event loop; everything else runs on the worker."""

    def __init__(self, model: BatchModel, tokenizer: Any, *, max_model_len: int, eos_token_ids: Sequence[int],
                 batch_size: int, batch_timeout: float, max_prefill_tokens: int, name: str = "engine",
                 num_threads: Optional[int] = None, metrics: Observer = NO_METRICS):
        """batch_size: most running rows; batch_timeout: seconds an idle worker waits for company after the first
        request; max_prefill_tokens: padded tokens (rows x longest prompt) one prefill forward may hold, which
        bounds the memory a burst of long prompts needs (a larger burst is prefilled in several groups)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        # The worker decodes with its own copy: one fast tokenizer used from two threads can fail ("Already
        # borrowed") while the event loop encodes prompts.
        self.tokenizer = copy.deepcopy(tokenizer)
        self.max_model_len = max_model_len
        self.eos_ids = frozenset(eos_token_ids)
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.max_prefill_tokens = max_prefill_tokens
        self.name = name
        self.num_threads = num_threads
        self.metrics = metrics
        self._cond = threading.Condition()
        self._pending: collections.deque[Stream] = collections.deque()
        self._streams: dict[str, Stream] = {}  # pending and running, by request id
        self._running = 0
        self._stopping = False
        self._error: Optional[BaseException] = None
        self._rows: list[Row] = []
        self.steps = 0
        self._thread = threading.Thread(target=self._work, name=f"{name}-batching", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # ---- event loop side ----

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        prompt = request.prompt_token_ids
        if not prompt:
            raise ValueError("prompt_token_ids is empty")
        if request.sampling.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {request.sampling.max_tokens}")
        if len(prompt) + request.sampling.max_tokens > self.max_model_len:
            raise ValueError(f"{len(prompt)} prompt tokens + max_tokens {request.sampling.max_tokens} exceed "
                             f"max_model_len {self.max_model_len}")
        stream = Stream(request, asyncio.get_running_loop())
        with self._cond:
            self._raise_if_dead()
            if request.request_id in self._streams:
                raise ValueError(f"request id {request.request_id!r} is already running")
            self._streams[request.request_id] = stream
            self._pending.append(stream)
            self._cond.notify_all()
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finish_reason is not None
                yield item
                if finished:
                    return
        finally:
            if not finished:  # the consumer left (client disconnect, cancellation): free the slot
                self.abort(request.request_id)

    def abort(self, request_id: str) -> None:
        with self._cond:
            stream = self._streams.get(request_id)
            if stream is None:
                return
            stream.aborted = True
            try:
                self._pending.remove(stream)
                del self._streams[request_id]
            except ValueError:
                pass  # running: the worker drops its row before the next step
            self._cond.notify_all()

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(running_requests=self._running, waiting_requests=len(self._pending),
                               extra={"max_batch_size": self.batch_size, "decode_steps": self.steps})

    def check_health(self) -> None:
        with self._cond:
            self._raise_if_dead()

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise EngineDeadError(f"{self.name} engine's batching thread died: {self._error!r}")
        if self._stopping:
            raise EngineDeadError(f"{self.name} engine is shut down")
        if self._thread.ident is not None and not self._thread.is_alive():
            raise EngineDeadError(f"{self.name} engine's batching thread is not running")

    def shutdown(self, timeout: float = 30) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    # ---- worker side ----

    def _work(self) -> None:
        if self.num_threads:  # OpenMP's thread count is per thread: set it where the forwards run
            torch.set_num_threads(self.num_threads)
        try:
            self._report()
            while True:
                admitted = self._admit()
                if admitted is None:
                    break
                self._drop_finished()
                if admitted:
                    self._prefill(admitted)
                if self._rows:
                    self._decode()
                self._report()
            reason: BaseException = EngineDeadError(f"{self.name} engine is shut down")
        except BaseException as error:  # a bug in this loop: the replica must be replaced
            logger.exception("%s batching thread died", self.name)
            reason = error
            with self._cond:
                self._error = error
        with self._cond:
            streams = list(self._streams.values())
            self._streams.clear()
            self._pending.clear()
            self._running = 0
        for stream in streams:
            stream.post(EngineDeadError(f"{self.name} engine stopped: {reason!r}"))

    def _admit(self) -> Optional[list[Stream]]:
        """Requests that join the batch now: whatever waits at a step boundary; when idle, block for the first and
        give it batch_timeout to gather company. None when shutting down."""
        with self._cond:
            while not self._stopping and not self._pending and not self._rows:
                self._cond.wait()
            free = self.batch_size - len(self._rows)
            if not self._rows and self._pending and self.batch_timeout > 0:
                deadline = self._pending[0].arrived + self.batch_timeout
                while not self._stopping and len(self._pending) < free:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            if self._stopping:
                return None
            admitted = []
            while self._pending and len(admitted) < free:
                admitted.append(self._pending.popleft())
            self._running += len(admitted)
            return admitted

    def _release(self, rows: Sequence[Row]) -> None:
        with self._cond:
            for row in rows:
                if self._streams.pop(row.stream.request.request_id, None) is not None:
                    self._running -= 1

    def _report(self) -> None:
        with self._cond:
            running, waiting = self._running, len(self._pending)
        cache_bytes = getattr(self.model, "cache_bytes", None)
        self.metrics.state(running, waiting, self._rows, cache_bytes() if cache_bytes else None)

    def _emit(self, rows: Sequence[Row], tokens: Sequence[int]) -> None:
        now = time.monotonic()
        for row, token in zip(rows, tokens):
            if row.stream.aborted:
                continue
            chunk = row.accept(token, self.max_model_len)
            self.metrics.token(row, now)
            if chunk is None:
                continue
            if chunk.finish_reason is not None:
                self._release([row])  # before the answer: whoever sees it finished sees it gone from stats
                self.metrics.finished(row, now)
            row.stream.post(chunk)

    def _fail(self, rows: Sequence[Row], error: Exception) -> None:
        for row in rows:
            row.stream.post(RuntimeError(f"{self.name} engine failed on this request: {error!r}"))
        self._release(rows)

    def _prefill(self, streams: list[Stream]) -> None:
        rows = [Row(s, self.tokenizer, self.eos_ids) for s in streams]
        rows.sort(key=lambda r: len(r.prompt))
        group: list[Row] = []
        for row in rows:  # shortest first, so each group pads little
            if group and (len(group) + 1) * len(row.prompt) > self.max_prefill_tokens:
                self._prefill_group(group)
                group = []
            group.append(row)
        if group:
            self._prefill_group(group)

    def _prefill_group(self, rows: list[Row]) -> None:
        try:
            with torch.inference_mode():
                logits = self.model.prefill([row.prompt for row in rows])
        except Exception as error:  # this group's prompts only; the running batch carries on
            logger.exception("%s prefill failed", self.name)
            self._fail(rows, error)
            return
        self.metrics.step("prefill", rows, sum(len(row.prompt) for row in rows))
        self._rows.extend(rows)
        self._emit(rows, sample(logits, rows))
        self._drop_finished()

    def _decode(self) -> None:
        rows = self._rows
        try:
            with torch.inference_mode():
                logits = self.model.decode([row.next_token for row in rows])
        except Exception as error:  # the cache is in an unknown state: fail the batch, keep serving new ones
            logger.exception("%s decode step failed", self.name)
            self._fail(rows, error)
            self._rows = []
            self.model.reset()
            return
        self.steps += 1
        self.metrics.step("decode", rows, 0)
        for row in rows:
            row.position += 1
        self._emit(rows, sample(logits, rows))
        self._drop_finished()

    def _drop_finished(self) -> None:
        """Finished requests were answered in `_emit`; aborted ones stop here. Both leave the cache now."""
        done = [row for row in self._rows if row.done]
        if not done:
            return
        self._release(done)
        keep = [i for i, row in enumerate(self._rows) if not row.done]
        self._rows = [self._rows[i] for i in keep]
        if keep:
            self.model.keep(keep)
        else:
            self.model.reset()
