"""One request in the batching loop: `Stream` is its asyncio side (where the worker posts chunks), `Row` its worker
side (sampling state, incremental detokenizing, stop strings, finish reasons)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

from ..base import GenerationChunk, GenerationRequest
from .sampling import generator

DETOKENIZE_CONTEXT = 5  # prompt tokens decoded with the output, so a leading space survives (SentencePiece)


class Stream:
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


class Row:
    """The worker side of one request in the batch: sampling state, detokenizer offsets, stop handling."""

    def __init__(self, stream: Stream, tokenizer: Any, eos_ids: frozenset[int]):
        request = stream.request
        options = request.sampling
        self.stream = stream
        self.prompt = request.prompt_token_ids
        self.options = options
        self.eos_ids = eos_ids
        self.tokenizer = tokenizer
        self.generator = generator(options.seed)
        self.generated = 0
        self.next_token = -1  # sampled, not yet fed to the model
        self.position = len(self.prompt)  # tokens in the KV cache
        self.scheduled = time.monotonic()  # left the queue (metrics: queue wait)
        self.last_token_at: Optional[float] = None  # time.monotonic() of its latest token (metrics)
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
