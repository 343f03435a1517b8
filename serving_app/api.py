"""The HTTP API's logic, free of Ray: request bodies in, response bodies or byte streams out.

Every request is validated and tokenized here, so a bad request is answered with a 4xx before it reaches an
engine, the same way for every engine.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Optional, Union

from pydantic import BaseModel, ValidationError

from .engines.base import Engine, EngineDeadError, GenerationChunk, GenerationRequest, SamplingOptions
from .protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionStreamResponse,
    DeltaMessage,
    ErrorInfo,
    ErrorResponse,
    LegacyRequest,
    LegacyResponse,
    LegacyStreamChunk,
    ModelCard,
    ModelList,
    UsageInfo,
    new_id,
    now,
)
from .serve_args import ServeArgs, describe_validation_error


class APIError(Exception):
    """An error the client caused (or can act on), answered with an OpenAI-style body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: Optional[str] = None,
                 param: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param


# The errors that become an HTTP answer; anything else is a bug and stays a 500.
ANSWERED_ERRORS = (APIError, EngineDeadError)


def error_response(error: Union[APIError, EngineDeadError]) -> tuple[int, ErrorResponse]:
    """The one place an error becomes a status and an OpenAI error body."""
    if isinstance(error, EngineDeadError):
        error = APIError(503, str(error), type_="server_error", code="engine_dead")
    info = ErrorInfo(message=error.message, type=error.type, param=error.param, code=error.code)
    return error.status, ErrorResponse(error=info)


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    if not raw.strip():
        raise APIError(400, "request body is empty: expected a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        if any(problem["type"] == "json_invalid" for problem in error.errors()):
            message = f"request body is not valid JSON: {error.errors()[0]['msg']}"
            raise APIError(400, message, code="invalid_json") from None
        first_loc = error.errors()[0]["loc"]
        raise APIError(
            400,
            describe_validation_error(error),
            param=".".join(str(part) for part in first_loc) or None,
            code="invalid_request",
        ) from None


def sse(payload: BaseModel) -> bytes:
    return b"data: " + payload.model_dump_json().encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The model's chat template; BigDL-LLM's transformers (4.31) predates apply_chat_template, so render it."""
    template = getattr(tokenizer, "chat_template", None)
    if template and hasattr(tokenizer, "apply_chat_template"):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    template = template or getattr(tokenizer, "init_kwargs", {}).get("chat_template")
    if not template:
        raise APIError(400, "this model's tokenizer has no chat template: use /v1/completions", code="no_chat_template")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
    )


OpenAIRequest = Union[CompletionRequest, ChatCompletionRequest]
ChoiceOf = Callable[[str, Optional[str]], BaseModel]  # (text, finish_reason) -> a choice


@dataclass(frozen=True)
class _Shape:
    """How one OpenAI endpoint's bodies look; generating them is the same for both."""

    response: type[BaseModel]  # the whole answer
    choice: ChoiceOf  # its choice
    chunk: type[BaseModel]  # one streamed event
    chunk_choice: ChoiceOf  # its choice
    opening: Optional[BaseModel] = None  # a first event's choice, before any text


_SHAPES: dict[type, _Shape] = {
    CompletionRequest: _Shape(CompletionResponse, CompletionResponseChoice.of,
                              CompletionStreamResponse, CompletionResponseChoice.of),
    ChatCompletionRequest: _Shape(
        ChatCompletionResponse, ChatCompletionResponseChoice.of,
        ChatCompletionStreamResponse, ChatCompletionResponseStreamChoice.of,
        # OpenAI's chat stream announces the role first.
        opening=ChatCompletionResponseStreamChoice(delta=DeltaMessage(role="assistant", content="")),
    ),
}


class OpenAIAPI:
    def __init__(self, engine: Engine, args: ServeArgs):
        self.engine = engine
        self.args = args
        self.model_id = args.served_model_name

    # ---- shared steps ------------------------------------------------------------------------------------

    def _check_model(self, model: Optional[str]) -> None:
        if model is not None and model != self.model_id:
            raise APIError(
                404, f"model {model!r} does not exist; this server serves {self.model_id!r}",
                type_="invalid_request_error", code="model_not_found", param="model",
            )

    def _tokenize(self, prompt: Union[str, list[int]], add_special_tokens: bool) -> list[int]:
        if isinstance(prompt, list):
            vocab = len(self.engine.tokenizer)
            bad = [t for t in prompt if t < 0 or t >= vocab]
            if bad:
                raise APIError(400, f"prompt token ids out of range [0, {vocab}): {bad[:5]}", param="prompt")
            ids = list(prompt)
        else:
            ids = self.engine.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        if not ids:
            raise APIError(400, "prompt is empty", param="prompt")
        return ids

    def _sampling(self, body: Any, prompt_len: int, max_tokens: Optional[int], stop: Optional[list[str]]) -> SamplingOptions:
        limit = self.engine.max_model_len
        if prompt_len >= limit:
            raise APIError(
                400, f"this model's maximum context length is {limit} tokens, but the prompt has {prompt_len} tokens",
                code="context_length_exceeded", param="prompt",
            )
        if max_tokens is None:
            max_tokens = min(self.args.max_new_tokens, limit - prompt_len)
        elif prompt_len + max_tokens > limit:
            raise APIError(
                400,
                f"this model's maximum context length is {limit} tokens, but {prompt_len + max_tokens} were requested "
                f"({prompt_len} in the prompt, {max_tokens} for the completion): lower max_tokens",
                code="context_length_exceeded", param="max_tokens",
            )
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=self.args.temperature if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=tuple(stop or ()),
            seed=body.seed,
            ignore_eos=getattr(body, "ignore_eos", False),
        )

    async def _run(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """The engine's stream; on any early exit (client gone, error) the request is aborted in the engine."""
        finished = False
        try:
            async for chunk in self.engine.generate(request):
                finished = chunk.finish_reason is not None
                yield chunk
        finally:
            if not finished:
                await self.engine.abort(request.request_id)

    async def _collect(self, request: GenerationRequest) -> tuple[str, GenerationChunk]:
        parts = []
        last = GenerationChunk(text="", num_generated_tokens=0, finish_reason="stop")
        async for chunk in self._run(request):
            parts.append(chunk.text)
            last = chunk
        return "".join(parts), last

    def _prepare_completion(self, body: CompletionRequest) -> GenerationRequest:
        self._check_model(body.model)
        ids = self._tokenize(body.single_prompt(), add_special_tokens=True)
        return GenerationRequest(new_id("cmpl"), ids, self._sampling(body, len(ids), body.max_tokens, body.stop))

    def _prepare_chat(self, body: ChatCompletionRequest) -> GenerationRequest:
        self._check_model(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        ids = self._tokenize(render_chat(self.engine.tokenizer, messages), add_special_tokens=False)
        return GenerationRequest(new_id("chatcmpl"), ids, self._sampling(body, len(ids), body.max_tokens, body.stop))

    @staticmethod
    def _usage(request: GenerationRequest, generated: int) -> UsageInfo:
        return UsageInfo.of(len(request.prompt_token_ids), generated)

    # ---- OpenAI endpoints ------------------------------------------------------------------------------

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.model_id, max_model_len=self.engine.max_model_len)])

    def completion_request(self, raw: bytes) -> tuple[CompletionRequest, GenerationRequest]:
        body = parse_body(CompletionRequest, raw)
        return body, self._prepare_completion(body)

    def chat_request(self, raw: bytes) -> tuple[ChatCompletionRequest, GenerationRequest]:
        body = parse_body(ChatCompletionRequest, raw)
        return body, self._prepare_chat(body)

    async def answer(self, body: OpenAIRequest, request: GenerationRequest) -> BaseModel:
        """The whole answer to a completion or chat completion request."""
        shape = _SHAPES[type(body)]
        text, last = await self._collect(request)
        return shape.response(id=request.request_id, model=self.model_id,
                              choices=[shape.choice(text, last.finish_reason)],
                              usage=self._usage(request, last.num_generated_tokens))

    async def stream(self, body: OpenAIRequest, request: GenerationRequest) -> AsyncIterator[bytes]:
        """The server-sent events of a streamed completion or chat completion: one per new text, then usage."""
        shape = _SHAPES[type(body)]
        head = {"id": request.request_id, "created": now(), "model": self.model_id}
        if shape.opening is not None:
            yield sse(shape.chunk.model_construct(**head, choices=[shape.opening]))
        generated = 0
        async with aclosing(self._run(request)) as chunks:  # a consumer that stops reading aborts at once
            async for chunk in chunks:
                generated = chunk.num_generated_tokens
                if chunk.text or chunk.finish_reason:
                    choice = shape.chunk_choice(chunk.text, chunk.finish_reason)
                    yield sse(shape.chunk.model_construct(**head, choices=[choice]))
        if body.wants_usage_chunk():
            yield sse(shape.chunk.model_construct(**head, choices=[], usage=self._usage(request, generated)))
        yield SSE_DONE

    # ---- the legacy chatbot API ------------------------------------------------------------------------

    def legacy_requests(self, raw: bytes) -> tuple[LegacyRequest, list[GenerationRequest]]:
        body = parse_body(LegacyRequest, raw)
        max_tokens = body.max_tokens if body.max_tokens is not None else body.max_new_tokens
        requests = []
        for prompt in body.prompts():
            ids = self._tokenize(prompt, add_special_tokens=True)
            requests.append(
                GenerationRequest(new_id("legacy"), ids, self._sampling(body, len(ids), max_tokens, body.stops()))
            )
        return body, requests

    async def legacy(self, requests: list[GenerationRequest]) -> LegacyResponse:
        results = await asyncio.gather(*(self._collect(request) for request in requests))
        return LegacyResponse(text=[text for text, _ in results])

    async def legacy_stream(self, request: GenerationRequest) -> AsyncIterator[bytes]:
        """JSON lines, one per new text."""
        async with aclosing(self._run(request)) as chunks:
            async for chunk in chunks:
                if chunk.text:
                    yield LegacyStreamChunk.model_construct(text=chunk.text).model_dump_json().encode() + b"\n"
