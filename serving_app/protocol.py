"""HTTP request and response bodies: the OpenAI API subset we serve, and the legacy chatbot API.

The legacy chatbot API is the body an existing chatbot client posts to the route prefix itself:
`{"prompt", "stream", "max_tokens", "temperature", ...}` answered by `{"text": [...]}`, or JSON lines
`{"text": "<delta>"}` when streaming.

Request models forbid unknown fields so a misspelt parameter is a 400 naming it, not a silently ignored knob.
Response models are named as in vLLM's OpenAI protocol; a stream builds one per token, so the stream's models are
made with `model_construct` (their values come from the engine, not the client) and dumped straight to JSON.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, field_validator, model_serializer, model_validator

MAX_STOP_SEQUENCES = 4
# Engines match every stop sequence against the text after each token: longer ones only cost the replica.
MAX_STOP_CHARS = 256


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _StopField(_Request):
    """`stop`: one string or a list, bounded in number and length; a list once validated."""

    stop: Optional[Union[str, list[str]]] = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: Optional[Union[str, list[str]]]) -> Optional[list[str]]:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return stops


class StreamOptions(_Request):
    include_usage: bool = False


class _SamplingFields(_StopField):
    """Fields shared by completions and chat completions."""

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    seed: Optional[int] = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None  # accepted for compatibility; only logged by clients' own tooling
    ignore_eos: bool = False  # vLLM's extension, used by load generators for fixed output lengths
    # Accepted only at their neutral values: we do not implement them and will not pretend to.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0  # vLLM's extension; its load generator always sends the neutral 1.0
    logprobs: Optional[Any] = None

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        if self.n != 1:
            raise ValueError("n > 1 is not supported: send n separate requests (they are batched together)")
        if self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0:
            raise ValueError("presence_penalty, frequency_penalty and repetition_penalty are not supported")
        if self.logprobs not in (None, False):
            raise ValueError("logprobs are not supported")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        return self

    def wants_usage_chunk(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[int], list[str], list[list[int]]]
    echo: bool = False
    best_of: Optional[int] = None
    suffix: Optional[str] = None

    @model_validator(mode="after")
    def _single_prompt(self):
        if self.echo:
            raise ValueError("echo is not supported")
        if self.best_of not in (None, 1):
            raise ValueError("best_of > 1 is not supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        if isinstance(self.prompt, list) and self.prompt and not isinstance(self.prompt[0], int):
            if len(self.prompt) != 1:
                raise ValueError("one prompt per request: send several requests (they are batched together)")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        return self

    def single_prompt(self) -> Union[str, list[int]]:
        if isinstance(self.prompt, list) and self.prompt and not isinstance(self.prompt[0], int):
            return self.prompt[0]
        return self.prompt


class TextContentPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[TextContentPart]]
    name: Optional[str] = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_max(self):
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class LegacyRequest(_StopField):
    """A request of the legacy chatbot API."""

    prompt: Union[str, list[str]]
    stream: bool = False
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_new_tokens: Optional[int] = Field(default=None, ge=1)  # the legacy chatbot API's other spelling
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    seed: Optional[int] = None

    @model_validator(mode="after")
    def _check(self):
        if self.max_tokens is not None and self.max_new_tokens is not None:
            raise ValueError("give max_tokens or max_new_tokens, not both")
        if isinstance(self.prompt, list):
            if not self.prompt:
                raise ValueError("prompt must not be empty")
            if self.stream and len(self.prompt) != 1:
                raise ValueError("streaming takes one prompt")
        return self

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


# ---- responses -------------------------------------------------------------------------------------------

FinishReason = Literal["stop", "length"]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UsageInfo(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "UsageInfo":
        return cls.model_construct(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                   total_tokens=prompt_tokens + completion_tokens)


class CompletionResponseChoice(_Response):
    """One choice of a completion, whole or streamed (OpenAI gives both the same keys)."""

    index: int = 0
    text: str
    logprobs: None = None  # always null: logprobs are refused at the request
    finish_reason: Optional[FinishReason] = None

    @classmethod
    def of(cls, text: str, finish_reason: Optional[str]) -> "CompletionResponseChoice":
        return cls.model_construct(text=text, finish_reason=finish_reason)


class ChatResponseMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionResponseChoice(_Response):
    index: int = 0
    message: ChatResponseMessage
    logprobs: None = None
    finish_reason: Optional[FinishReason] = None

    @classmethod
    def of(cls, text: str, finish_reason: Optional[str]) -> "ChatCompletionResponseChoice":
        return cls.model_construct(message=ChatResponseMessage.model_construct(content=text),
                                   finish_reason=finish_reason)


class DeltaMessage(_Response):
    """What a chat stream chunk adds; a key is absent, not null, when it adds nothing to it."""

    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None

    @model_serializer(mode="wrap")
    def _absent_when_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatCompletionResponseStreamChoice(_Response):
    index: int = 0
    delta: DeltaMessage
    finish_reason: Optional[FinishReason] = None

    @classmethod
    def of(cls, text: str, finish_reason: Optional[str]) -> "ChatCompletionResponseStreamChoice":
        return cls.model_construct(delta=DeltaMessage.model_construct(content=text or None),
                                   finish_reason=finish_reason)


class _CompletionBody(_Response):
    """The keys every completion body has; subclasses narrow `object` and `choices` (keeping the key order)."""

    id: str
    object: str
    created: int = Field(default_factory=now)
    model: str
    choices: list[Any]


class CompletionResponse(_CompletionBody):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionResponseChoice]
    usage: UsageInfo


class ChatCompletionResponse(_CompletionBody):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo


class _StreamChunk(_CompletionBody):
    """One server-sent event's body. Only the last chunk, with no choices, has `usage` (include_usage)."""

    usage: Optional[UsageInfo] = None

    @model_serializer(mode="wrap")
    def _usage_only_when_counted(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("usage") is None:
            data.pop("usage", None)
        return data


class CompletionStreamResponse(_StreamChunk):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionResponseChoice]


class ChatCompletionStreamResponse(_StreamChunk):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatCompletionResponseStreamChoice]


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "serving_app"
    max_model_len: Optional[int] = None


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LegacyResponse(_Response):
    """The legacy chatbot API's whole answer: one text per prompt."""

    text: list[str]


class LegacyStreamChunk(_Response):
    """One JSON line of the legacy chatbot API's stream: the new text."""

    text: str


class ErrorInfo(_Response):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(_Response):
    error: ErrorInfo
