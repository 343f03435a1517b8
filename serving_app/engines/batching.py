"""Dynamic batching for the CPU engines (BigDL-LLM, ONNX Runtime): one generation loop, shared by both.

Requests wait in a queue; a worker thread takes up to `batch_size` of them (when idle it waits at most
`batch_timeout` after the first for more), prefills them together and then decodes the whole batch one token per
step. Between steps the batch changes shape: finished and aborted requests leave at once (their rows are dropped
from the KV cache), and waiting requests join (prefilled, then merged into the cache). Every request has its own
stream, sampling options, generator and token budget; rows are left-padded, with an attention mask and position
ids, so a request's output does not depend on its neighbours' lengths.

The model side is `BatchModel`: it owns the running rows' KV cache and is told which rows to prefill, decode, keep
or forget. `LeftPaddedBatch` implements it over any Hugging Face style forward (BigDL-LLM) with the legacy cache
layout: a tuple (one entry per layer) of tuples of tensors shaped [batch, heads, time, head_dim], left-padded, with
an attention mask. The ONNX Runtime engine has its own (a preallocated buffer updated in place). Engine libraries
are not imported here; torch is in every CPU image.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import copy
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional, Protocol, Sequence

import torch

from ..serve_args import ServeArgs
from .base import Engine, EngineDeadError, EngineStats, GenerationChunk, GenerationRequest
from .options import BatchingOptions

logger = logging.getLogger("ray.serve")

GREEDY_BELOW = 1e-5  # temperatures below this decode greedily (0 is greedy, as in OpenAI's API)
DEFAULT_BATCH_SIZE = 16
# Padded tokens (rows x longest prompt) one prefill forward may hold: bounds the attention and logits memory a
# burst of long prompts needs; a larger burst is prefilled in several groups.
DEFAULT_MAX_PREFILL_TOKENS = 4096
DETOKENIZE_CONTEXT = 5  # prompt tokens decoded with the output, so a leading space survives (SentencePiece)

Past = Any  # tuple[tuple[torch.Tensor, ...], ...]


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


class Forward(Protocol):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past: Optional[Past]) -> tuple[torch.Tensor, Past]:
        """input_ids/position_ids [batch, new], attention_mask [batch, past + new]: the last position's logits
        [batch, vocab] and the grown cache."""


class HFCausalLM:
    """A transformers causal LM (BigDL-LLM's optimised models are ones): its forward over the legacy cache layout."""

    def __init__(self, model: Any):
        self.model = model
        try:  # transformers >= 4.36 models take Cache objects; older ones (BigDL-LLM's 4.31) tuples
            from transformers.cache_utils import DynamicCache
        except ImportError:
            DynamicCache = None
        self._cache_class = DynamicCache
        import inspect

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


# ---- KV cache surgery: every result is a fresh contiguous tensor (BigDL-LLM appends in place into a strided
# view of a larger buffer, addressed from offset 0: a view of a view would be written wrongly). -----------------


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


# ---- requests ------------------------------------------------------------------------------------------------


class _Stream:
    """The asyncio side of one request: the worker thread posts chunks (or an exception) into its queue."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop):
        self.request = request
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.aborted = False
        self.arrived = time.monotonic()

    def post(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.aborted = True


class _Row:
    """The worker side of one request in the batch: sampling state, detokenizer offsets, stop handling."""

    def __init__(self, stream: _Stream, tokenizer: Any, eos_ids: frozenset[int]):
        request = stream.request
        options = request.sampling
        self.stream = stream
        self.prompt = request.prompt_token_ids
        self.options = options
        self.eos_ids = eos_ids
        self.tokenizer = tokenizer
        self.generator = torch.Generator()
        seed = options.seed if options.seed is not None else int.from_bytes(os.urandom(8), "little")
        self.generator.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
        self.generated = 0
        self.next_token = -1  # sampled, not yet fed to the model
        self.position = len(self.prompt)  # tokens in the KV cache
        self.ids = list(self.prompt[-DETOKENIZE_CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""
        self.sent = 0
        self.finish: Optional[str] = None
        self.longest_stop = max((len(s) for s in options.stop), default=0)

    @property
    def done(self) -> bool:
        return self.finish is not None or self.stream.aborted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _new_text(self, final: bool) -> str:
        """Text the tokens since the last call add; holds back an incomplete UTF-8 character unless final."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix):]
        return ""

    def accept(self, token: int, max_model_len: int) -> Optional[GenerationChunk]:
        """Take one sampled token; the chunk to send, if there is new text or the request finished."""
        self.generated += 1
        self.next_token = token
        if token in self.eos_ids and not self.options.ignore_eos:
            self.finish = "stop"
            new = self._new_text(final=True)
        else:
            self.ids.append(token)
            limit = self.generated >= self.options.max_tokens or self.position + 1 >= max_model_len
            new = self._new_text(final=limit)
            if limit:
                self.finish = "length"
        if new:
            searched_from = max(0, len(self.text) - self.longest_stop + 1)
            self.text += new
            hits = [i for i in (self.text.find(s, searched_from) for s in self.options.stop) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.finish = "stop"
        end = len(self.text)
        if self.finish is None and self.options.stop:
            end -= self._held_back()
        if end <= self.sent and self.finish is None:
            return None
        chunk = GenerationChunk(text=self.text[self.sent:end], num_generated_tokens=self.generated,
                                finish_reason=self.finish)
        self.sent = max(self.sent, end)
        return chunk

    def _held_back(self) -> int:
        """Characters at the end that may be the start of a stop sequence: not sent until that is known."""
        for size in range(min(self.longest_stop - 1, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(stop.startswith(tail) for stop in self.options.stop):
                return size
        return 0


def sample(logits: torch.Tensor, rows: Sequence[_Row]) -> list[int]:
    """One token per row: greedy at temperature 0, else temperature + top-p with the row's own generator."""
    greedy = logits.argmax(dim=-1).tolist()
    tokens = []
    for i, row in enumerate(rows):
        options = row.options
        if options.temperature < GREEDY_BELOW:
            tokens.append(greedy[i])
            continue
        scores = logits[i] / options.temperature
        if options.top_p < 1.0:
            ordered, order = scores.sort(descending=True)
            probs = ordered.softmax(dim=-1)
            # Drop tokens once the ones before them already reach top_p; the most likely token always stays.
            cut = probs.cumsum(dim=-1) - probs > options.top_p
            ordered = ordered.masked_fill(cut, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(0, order, ordered)
        probs = scores.softmax(dim=-1)
        tokens.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return tokens


# ---- the scheduler --------------------------------------------------------------------------------------------


class BatchScheduler:
    """Owns the worker thread and the running batch. `generate`, `abort` and `stats` are called from the
    replica's event loop; everything else runs on the worker."""

    def __init__(self, model: BatchModel, tokenizer: Any, *, max_model_len: int, eos_token_ids: Sequence[int],
                 batch_size: int = DEFAULT_BATCH_SIZE, batch_timeout: float = 0.01,
                 max_prefill_tokens: int = DEFAULT_MAX_PREFILL_TOKENS, name: str = "engine",
                 num_threads: Optional[int] = None):
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
        self._cond = threading.Condition()
        self._pending: collections.deque[_Stream] = collections.deque()
        self._streams: dict[str, _Stream] = {}  # pending and running, by request id
        self._running = 0
        self._stopping = False
        self._error: Optional[BaseException] = None
        self._rows: list[_Row] = []
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
        stream = _Stream(request, asyncio.get_running_loop())
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
            while True:
                admitted = self._admit()
                if admitted is None:
                    break
                self._drop_finished()
                if admitted:
                    self._prefill(admitted)
                if self._rows:
                    self._decode()
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

    def _admit(self) -> Optional[list[_Stream]]:
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

    def _release(self, rows: Sequence[_Row]) -> None:
        with self._cond:
            for row in rows:
                if self._streams.pop(row.stream.request.request_id, None) is not None:
                    self._running -= 1

    def _emit(self, rows: Sequence[_Row], tokens: Sequence[int]) -> None:
        for row, token in zip(rows, tokens):
            if row.stream.aborted:
                continue
            chunk = row.accept(token, self.max_model_len)
            if chunk is None:
                continue
            if chunk.finish_reason is not None:
                self._release([row])  # before the answer: whoever sees it finished sees it gone from stats
            row.stream.post(chunk)

    def _fail(self, rows: Sequence[_Row], error: Exception) -> None:
        for row in rows:
            row.stream.post(RuntimeError(f"{self.name} engine failed on this request: {error!r}"))
        self._release(rows)

    def _prefill(self, streams: list[_Stream]) -> None:
        rows = [_Row(s, self.tokenizer, self.eos_ids) for s in streams]
        rows.sort(key=lambda r: len(r.prompt))
        group: list[_Row] = []
        for row in rows:  # shortest first, so each group pads little
            if group and (len(group) + 1) * len(row.prompt) > self.max_prefill_tokens:
                self._prefill_group(group)
                group = []
            group.append(row)
        if group:
            self._prefill_group(group)

    def _prefill_group(self, rows: list[_Row]) -> None:
        try:
            with torch.inference_mode():
                logits = self.model.prefill([row.prompt for row in rows])
        except Exception as error:  # this group's prompts only; the running batch carries on
            logger.exception("%s prefill failed", self.name)
            self._fail(rows, error)
            return
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


# ---- the engine both CPU backends share -----------------------------------------------------------------------


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
        scheduler = BatchScheduler(
            loaded.model, loaded.tokenizer,
            max_model_len=loaded.max_model_len,
            eos_token_ids=loaded.eos_token_ids,
            batch_size=self.batch_size,
            batch_timeout=self.args.batch_timeout,
            max_prefill_tokens=self.options.max_prefill_tokens,
            name=self.label,
            num_threads=self.num_threads,
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
