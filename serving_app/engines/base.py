"""The one narrow interface every engine implements, and the values that cross it.

The ingress tokenizes, validates lengths and speaks HTTP; an engine only turns prompt token ids into a stream of
text deltas. Engine libraries are imported inside the engine modules, never here.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from ..lora import Adapter
from ..serve_args import ServeArgs


class EngineDeadError(RuntimeError):
    """The engine cannot serve any more requests; the replica must be replaced."""


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    lora: Optional[Adapter] = None  # a LoRA adapter to apply (engines in serving_app.lora.LORA_ENGINES)


@dataclass
class GenerationChunk:
    """What one engine step produced for one request."""

    text: str  # new text since the previous chunk (stop sequences already removed)
    num_generated_tokens: int  # cumulative
    finish_reason: Optional[str] = None  # "stop" or "length" on the last chunk


@dataclass
class EngineStats:
    running_requests: int
    waiting_requests: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(abc.ABC):
    """Created once per replica; `start` loads the model, then `generate` may be called concurrently."""

    def __init__(self, args: ServeArgs):
        self.args = args

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model. After this, `tokenizer` and `max_model_len` are set."""

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any:
        """A Hugging Face tokenizer (encode, decode, apply_chat_template, eos_token_id)."""

    @property
    @abc.abstractmethod
    def max_model_len(self) -> int:
        """Prompt plus generated tokens may not exceed this."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream one request's output. Closing the iterator early aborts the request."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop spending compute on a request; unknown or finished ids are ignored."""

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise EngineDeadError when the engine can no longer serve."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Requests the engine holds right now (for health pages, tests and benchmarks)."""

    async def shutdown(self) -> None:  # noqa: B027  (an optional hook: an engine with nothing to free keeps it)
        """Release the engine's processes and memory."""
