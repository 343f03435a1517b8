"""An in-memory engine for Ray-free tests: fixed tokens, a byte tokenizer, and a record of what it was asked."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Optional

from serving_app.engines.base import Engine, EngineStats, GenerationChunk, GenerationRequest
from serving_app.serve_args import ServeArgs

TOKENS = ("Hel", "lo", ", wor", "ld")  # what the fake engine says, one token per chunk, then it stops
MAX_MODEL_LEN = 64


class FakeTokenizer:
    """One token per UTF-8 byte; a chat template that writes `<role>content` per message."""

    chat_template = "<role>content"  # only its presence matters: apply_chat_template renders
    bos_token = eos_token = ""

    def __init__(self) -> None:
        self.rendered: list[list[dict[str, str]]] = []

    def __len__(self) -> int:
        return 256

    def get_vocab(self) -> dict[str, int]:
        return {chr(byte): byte for byte in range(256)}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode())

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        self.rendered.append(messages)
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


class FakeEngine(Engine):
    """Streams TOKENS (cut at max_tokens, or repeated with ignore_eos); `hold_after` tokens, it waits forever."""

    def __init__(self, args: ServeArgs, tokenizer: Any = None, hold_after: Optional[int] = None):
        super().__init__(args)
        self._tokenizer = tokenizer or FakeTokenizer()
        self.hold_after = hold_after
        self.requests: list[GenerationRequest] = []
        self.aborted: list[str] = []

    async def start(self) -> None:
        pass

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return MAX_MODEL_LEN

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        limit = request.sampling.max_tokens
        for n in range(1, limit + 1):
            if n > len(TOKENS) and not request.sampling.ignore_eos:
                yield GenerationChunk(text="", num_generated_tokens=n - 1, finish_reason="stop")
                return
            if self.hold_after is not None and n > self.hold_after:
                await asyncio.Event().wait()
            await asyncio.sleep(0)
            yield GenerationChunk(TOKENS[(n - 1) % len(TOKENS)], n, "length" if n == limit else None)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def check_health(self) -> None:
        pass

    def stats(self) -> EngineStats:
        return EngineStats(running_requests=0)
