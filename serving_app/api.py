"""The HTTP API's logic, free of Ray: request bodies in, response bodies or byte streams out.

Every request is validated and tokenized here, so a bad request is answered with a 4xx before it reaches an
engine, the same way for every engine. A large body is parsed, rendered and tokenized in a small thread pool
(`prepare`), off the event loop that streams every other client's tokens; a small one on the loop, where it
takes less time than the hop to a thread would. A prompt with more characters than the context could hold is
refused before it is tokenized. An engine error that leaves the engine dead is answered as
a 503, and one that comes mid-stream as a last error event, so no client is left with a cut-off stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Optional, TypeVar, Union

from pydantic import BaseModel, ValidationError

from .access_log import RequestRecord
from .engines.base import Engine, EngineDeadError, GenerationChunk, GenerationRequest, SamplingOptions
from .lora import Adapter, ModelCatalog
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
from .errors import ANSWERED_ERRORS, APIError, deadline_passed, error_response, prompt_too_long
from .prompts import longest_token_chars, render_chat
from .serve_args import ServeArgs, describe_validation_error
from .sse import SSE_DONE, TextEvents, json_line, sse

logger = logging.getLogger("ray.serve")


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


# Threads that parse, render and tokenize large requests; more would only contend for the same cores as the engine.
PREPARE_THREADS = 2
# Bodies up to this size are prepared on the event loop: ~0.1-1 ms of work, where the hop to a thread and back
# costs 1.5-3 ms once the loop is busy (benchmarks/prepare_hop.py), and a burst of requests waits it in turn.
INLINE_PREPARE_BYTES = 4096

OpenAIRequest = Union[CompletionRequest, ChatCompletionRequest]
Prepared = TypeVar("Prepared")
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
        self.catalog = ModelCatalog(args.served_model_name, args.lora, args.engine)
        self._token_chars = longest_token_chars(engine.tokenizer)
        self.max_prompt_chars = engine.max_model_len * self._token_chars
        self._pool = ThreadPoolExecutor(max_workers=PREPARE_THREADS, thread_name_prefix="prepare")

    async def prepare(self, parse: Callable[[bytes], Prepared], raw: bytes) -> Prepared:
        """`parse(raw)` (one of completion_request, chat_request, legacy_requests): a body over
        INLINE_PREPARE_BYTES in the thread pool, a smaller one right here."""
        if len(raw) <= INLINE_PREPARE_BYTES:
            return parse(raw)
        return await asyncio.get_running_loop().run_in_executor(self._pool, parse, raw)

    # ---- shared steps ------------------------------------------------------------------------------------

    def _check_model(self, model: Optional[str]) -> Optional[Adapter]:
        """The LoRA adapter `model` names (None: the base model), or a 404 naming every model served here."""
        try:
            return self.catalog.resolve(model)
        except LookupError as error:
            raise APIError(404, str(error), type_="invalid_request_error", code="model_not_found",
                           param="model") from None

    def _model_of(self, request: GenerationRequest) -> str:
        return request.lora.name if request.lora is not None else self.model_id

    def _tokenize(self, prompt: Union[str, list[int]], add_special_tokens: bool) -> list[int]:
        limit = self.engine.max_model_len
        if isinstance(prompt, list) and len(prompt) >= limit:
            raise prompt_too_long(limit, f"the prompt has {len(prompt)} tokens")
        if isinstance(prompt, str) and len(prompt) > self.max_prompt_chars:
            raise prompt_too_long(limit, f"a prompt of {len(prompt)} characters has more (this tokenizer's tokens "
                                          f"are at most {self._token_chars} characters long)")
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
            raise prompt_too_long(limit, f"the prompt has {prompt_len} tokens")
        cap = self.args.max_tokens_limit
        if cap is not None and max_tokens is not None and max_tokens > cap:
            raise APIError(400, f"max_tokens is {max_tokens}, but this server generates at most {cap} per request",
                           code="max_tokens_exceeded", param="max_tokens")
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

    async def _run(self, request: GenerationRequest, deadline: Optional[float] = None,
                   record: Optional[RequestRecord] = None) -> AsyncIterator[GenerationChunk]:
        """The engine's stream until `deadline` (time.monotonic()); on any early exit (client gone, error, deadline)
        the request is aborted in the engine. `record` (the access log's) learns the tokens as they come."""
        finished = False
        if record is not None:
            record.generation(request.request_id, len(request.prompt_token_ids))
        chunks = self.engine.generate(request)
        try:
            while not finished:
                try:
                    chunk = await _next_chunk(chunks, deadline)
                except StopAsyncIteration:
                    return
                except Exception as error:
                    dead = await self._dead_engine(error)
                    if dead is None:
                        raise
                    raise dead from error
                finished = chunk.finish_reason is not None
                if record is not None:
                    record.chunk(request.request_id, chunk.text, chunk.num_generated_tokens, chunk.finish_reason)
                yield chunk
        finally:
            if not finished:
                try:
                    await self.engine.abort(request.request_id)
                except Exception:  # a dead engine cannot abort; the error that ended the request matters more
                    logger.warning("could not abort request %s", request.request_id, exc_info=True)
            await chunks.aclose()

    async def _dead_engine(self, error: Exception) -> Optional[EngineDeadError]:
        """The EngineDeadError to answer when `error` left the engine dead, else None."""
        if isinstance(error, ANSWERED_ERRORS):
            return None
        try:
            await self.engine.check_health()
        except EngineDeadError as dead:
            return dead
        return None

    async def _collect(self, request: GenerationRequest, deadline: Optional[float],
                       record: Optional[RequestRecord] = None) -> tuple[str, GenerationChunk]:
        parts = []
        last = GenerationChunk(text="", num_generated_tokens=0, finish_reason="stop")
        async for chunk in self._run(request, deadline, record):
            parts.append(chunk.text)
            last = chunk
        return "".join(parts), last

    def _prepare_completion(self, body: CompletionRequest) -> GenerationRequest:
        adapter = self._check_model(body.model)
        ids = self._tokenize(body.single_prompt(), add_special_tokens=True)
        return GenerationRequest(new_id("cmpl"), ids, self._sampling(body, len(ids), body.max_tokens, body.stop),
                                 lora=adapter)

    def _prepare_chat(self, body: ChatCompletionRequest) -> GenerationRequest:
        adapter = self._check_model(body.model)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        ids = self._tokenize(render_chat(self.engine.tokenizer, messages), add_special_tokens=False)
        return GenerationRequest(new_id("chatcmpl"), ids, self._sampling(body, len(ids), body.max_tokens, body.stop),
                                 lora=adapter)

    @staticmethod
    def _usage(request: GenerationRequest, generated: int) -> UsageInfo:
        return UsageInfo.of(len(request.prompt_token_ids), generated)

    # ---- OpenAI endpoints ------------------------------------------------------------------------------

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=model, max_model_len=self.engine.max_model_len)
                               for model in self.catalog.ids()])

    def completion_request(self, raw: bytes) -> tuple[CompletionRequest, GenerationRequest]:
        body = parse_body(CompletionRequest, raw)
        return body, self._prepare_completion(body)

    def chat_request(self, raw: bytes) -> tuple[ChatCompletionRequest, GenerationRequest]:
        body = parse_body(ChatCompletionRequest, raw)
        return body, self._prepare_chat(body)

    async def answer(self, body: OpenAIRequest, request: GenerationRequest,
                     deadline: Optional[float] = None, record: Optional[RequestRecord] = None) -> BaseModel:
        """The whole answer to a completion or chat completion request."""
        shape = _SHAPES[type(body)]
        text, last = await self._collect(request, deadline, record)
        return shape.response(id=request.request_id, model=self._model_of(request),
                              choices=[shape.choice(text, last.finish_reason)],
                              usage=self._usage(request, last.num_generated_tokens))

    async def stream(self, body: OpenAIRequest, request: GenerationRequest,
                     deadline: Optional[float] = None, record: Optional[RequestRecord] = None) -> AsyncIterator[bytes]:
        """The server-sent events of a streamed completion or chat completion: one per new text, then usage; an
        error after the stream began is its last event (as vLLM sends it), then [DONE]."""
        shape = _SHAPES[type(body)]
        head = {"id": request.request_id, "created": now(), "model": self._model_of(request)}
        if shape.opening is not None:
            yield sse(shape.chunk.model_construct(**head, choices=[shape.opening]))
        generated = 0
        # The events in between (new text, no finish reason) from a template: the same bytes, a fraction of the cost.
        texts = TextEvents(lambda text: shape.chunk.model_construct(**head, choices=[shape.chunk_choice(text, None)]))
        try:
            async with aclosing(self._run(request, deadline, record)) as chunks:  # a consumer that stops reading aborts
                async for chunk in chunks:
                    generated = chunk.num_generated_tokens
                    if chunk.text and not chunk.finish_reason:
                        yield texts.event(chunk.text)
                    elif chunk.text or chunk.finish_reason:
                        choice = shape.chunk_choice(chunk.text, chunk.finish_reason)
                        yield sse(shape.chunk.model_construct(**head, choices=[choice]))
        except Exception as error:
            if record is not None:
                record.fail()
            yield sse(_stream_error(error, request))
            yield SSE_DONE
            return
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
                GenerationRequest(new_id("legacy"), ids, self._sampling(body, len(ids), max_tokens, body.stop))
            )
        return body, requests

    async def legacy(self, requests: list[GenerationRequest], deadline: Optional[float] = None,
                     record: Optional[RequestRecord] = None) -> LegacyResponse:
        results = await asyncio.gather(*(self._collect(request, deadline, record) for request in requests))
        return LegacyResponse(text=[text for text, _ in results])

    async def legacy_stream(self, request: GenerationRequest, deadline: Optional[float] = None,
                            record: Optional[RequestRecord] = None) -> AsyncIterator[bytes]:
        """JSON lines, one per new text; an error after the stream began is a last line with the error body."""
        lines = TextEvents(lambda text: LegacyStreamChunk.model_construct(text=text), json_line)
        try:
            async with aclosing(self._run(request, deadline, record)) as chunks:
                async for chunk in chunks:
                    if chunk.text:
                        yield lines.event(chunk.text)
        except Exception as error:
            if record is not None:
                record.fail()
            yield json_line(_stream_error(error, request))


async def _next_chunk(chunks: AsyncIterator[GenerationChunk], deadline: Optional[float]) -> GenerationChunk:
    if deadline is None:
        return await anext(chunks)
    try:
        return await asyncio.wait_for(anext(chunks), deadline - time.monotonic())
    except TimeoutError:
        if time.monotonic() < deadline:
            raise  # the engine's own
        raise deadline_passed("generating") from None


def _stream_error(error: Exception, request: GenerationRequest) -> ErrorResponse:
    """The body of an error that ends a stream already under way (its 200 is sent): answered errors keep theirs;
    anything else is a bug, logged with its traceback and reported without internals."""
    if not isinstance(error, ANSWERED_ERRORS):
        logger.error("request %s failed mid-stream", request.request_id, exc_info=error)
        error = APIError(500, "internal error while generating", type_="server_error", code="internal_error")
    return error_response(error)[1]
