"""The API's own request limits and fault handling (serving_app.api), without Ray or a model: the character bound
checked before tokenizing, the max_tokens and stop caps, tokenizing off the event loop, the per-request deadline,
and an engine that dies mid-request."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, AsyncIterator, Optional

import pytest

from serving_app.api import INLINE_PREPARE_BYTES, OpenAIAPI
from serving_app.errors import APIError, error_response
from serving_app.prompts import longest_token_chars
from serving_app.engines.base import EngineDeadError, GenerationChunk, GenerationRequest
from serving_app.protocol import MAX_STOP_CHARS
from serving_app.serve_args import ServeArgs
from tests.fake_engine import MAX_MODEL_LEN, FakeEngine, FakeTokenizer
from tests.api_helpers import events, make_api, raw

COMPLETION = {"prompt": "hi", "max_tokens": 20, "ignore_eos": True}


# A short prompt in a body over INLINE_PREPARE_BYTES (trailing whitespace), so it is prepared in the pool.
LARGE_BODY = raw({"prompt": "hi"}).ljust(INLINE_PREPARE_BYTES + 1)


class LongTokens(FakeTokenizer):
    """A vocabulary whose longest entry is 3 characters; counts its encode calls. With `wait_for` set, encode blocks
    until that event is set, as a long prompt's tokenizing holds its thread."""

    def __init__(self, wait_for: Optional[threading.Event] = None):
        super().__init__()
        self.encoded = 0
        self.wait_for = wait_for
        self.released_while_encoding = False

    def get_vocab(self) -> dict[str, int]:
        return {"a": 0, "bc": 1, "def": 2}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.encoded += 1
        if self.wait_for is not None:
            self.released_while_encoding = self.wait_for.wait(timeout=10)
        return super().encode(text, add_special_tokens)


def refused(call: Any) -> APIError:
    with pytest.raises(APIError) as error:
        call()
    return error.value


# ---- limits checked before the work they bound -----------------------------------------------------------


def test_the_longest_token_bounds_a_prompts_characters():
    assert longest_token_chars(LongTokens()) == 3
    assert make_api(tokenizer=LongTokens()).max_prompt_chars == 3 * MAX_MODEL_LEN


def test_a_prompt_with_more_characters_than_the_context_can_hold_is_refused_without_tokenizing():
    tokenizer = LongTokens()
    api = make_api(tokenizer=tokenizer)
    error = refused(lambda: api.completion_request(raw({"prompt": "x" * (3 * MAX_MODEL_LEN + 1)})))
    assert (error.status, error.code, error.param) == (400, "context_length_exceeded", "prompt")
    assert f"a prompt of {3 * MAX_MODEL_LEN + 1} characters" in error.message
    chat = {"messages": [{"role": "user", "content": "x" * (3 * MAX_MODEL_LEN)}]}  # the template adds the rest
    assert refused(lambda: api.chat_request(raw(chat))).code == "context_length_exceeded"
    legacy = {"prompt": ["ok", "x" * (3 * MAX_MODEL_LEN + 1)]}
    assert refused(lambda: api.legacy_requests(raw(legacy))).code == "context_length_exceeded"
    assert tokenizer.encoded == 1  # only the legacy request's first, short prompt
    assert api.engine.requests == []


def test_a_token_id_prompt_longer_than_the_context_is_refused_by_its_length():
    error = refused(lambda: make_api().completion_request(raw({"prompt": [1] * MAX_MODEL_LEN})))
    assert error.code == "context_length_exceeded" and f"the prompt has {MAX_MODEL_LEN} tokens" in error.message


def test_max_tokens_above_the_servers_cap_is_a_400_and_the_default_stays_under_it():
    args = ServeArgs(model_name="/models/fake", target_device="CPU", max_tokens_limit=8, max_new_tokens=8)
    api = OpenAIAPI(FakeEngine(args), args)
    error = refused(lambda: api.completion_request(raw({"prompt": "hi", "max_tokens": 9})))
    assert (error.status, error.code, error.param) == (400, "max_tokens_exceeded", "max_tokens")
    assert "at most 8" in error.message
    assert api.completion_request(raw({"prompt": "hi"}))[1].sampling.max_tokens == 8
    assert refused(lambda: api.legacy_requests(raw({"prompt": "hi", "max_new_tokens": 9}))).code == "max_tokens_exceeded"


@pytest.mark.parametrize("parse,body", [
    ("completion_request", {"prompt": "hi", "stop": ["x" * (MAX_STOP_CHARS + 1)]}),
    ("chat_request", {"messages": [{"role": "user", "content": "hi"}], "stop": "x" * (MAX_STOP_CHARS + 1)}),
    ("legacy_requests", {"prompt": "hi", "stop": ["x" * (MAX_STOP_CHARS + 1)]}),
    ("legacy_requests", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}),
])
def test_stop_sequences_are_bounded_in_length_and_number(parse, body):
    error = refused(lambda: getattr(make_api(), parse)(raw(body)))
    assert (error.status, error.param) == (400, "stop")


def test_a_stop_sequence_at_the_cap_is_accepted():
    _, request = make_api().completion_request(raw({"prompt": "hi", "stop": "x" * MAX_STOP_CHARS}))
    assert request.sampling.stop == ("x" * MAX_STOP_CHARS,)


def test_a_large_body_is_tokenized_off_the_event_loop():
    """Encode blocks until a task on the event loop releases it: that can only happen if the loop keeps running
    while the prompt is tokenized (on the loop, encode would wait out its timeout with the loop stopped)."""
    release = threading.Event()
    tokenizer = LongTokens(wait_for=release)
    api = make_api(tokenizer=tokenizer)

    async def run() -> None:
        async def release_from_the_loop() -> None:
            while tokenizer.encoded == 0:
                await asyncio.sleep(0.01)
            release.set()

        releaser = asyncio.ensure_future(release_from_the_loop())
        await api.prepare(api.completion_request, LARGE_BODY)
        await releaser

    asyncio.run(run())
    assert tokenizer.released_while_encoding


def test_a_small_body_is_prepared_on_the_loop_and_a_large_one_in_the_pool():
    threads = []

    def parse(body: bytes) -> int:
        threads.append(threading.current_thread())
        return len(body)

    async def prepare(body: bytes) -> int:
        return await make_api().prepare(parse, body)

    small = raw({"prompt": "hi"}).ljust(INLINE_PREPARE_BYTES)  # JSON may end in whitespace
    assert asyncio.run(prepare(small)) == INLINE_PREPARE_BYTES
    assert asyncio.run(prepare(LARGE_BODY)) == len(LARGE_BODY)
    assert threads[0] is threading.main_thread() and threads[1] is not threading.main_thread()


@pytest.mark.parametrize("body", [raw({"prompt": ""}), raw({"prompt": ""}).ljust(INLINE_PREPARE_BYTES + 1)],
                         ids=["on the loop", "in the pool"])
def test_a_bad_request_prepared_either_way_raises_its_400(body):
    api = make_api()
    with pytest.raises(APIError) as error:
        asyncio.run(api.prepare(api.completion_request, body))
    assert error.value.status == 400


# ---- the deadline ----------------------------------------------------------------------------------------


def test_a_stream_past_its_deadline_ends_with_a_timeout_event_and_aborts():
    api = make_api(hold_after=2)

    async def run() -> list[bytes]:
        body, request = api.completion_request(raw({**COMPLETION, "stream": True}))
        return [piece async for piece in api.stream(body, request, time.monotonic() + 0.2)]

    *texts, error = events(asyncio.run(run()))
    assert [c["choices"][0]["text"] for c in texts] == ["Hel", "lo"]
    assert error["error"]["code"] == "timeout" and error["error"]["type"] == "server_error"
    assert api.engine.aborted == [api.engine.requests[0].request_id]


def test_a_whole_answer_past_its_deadline_is_a_504():
    api = make_api(hold_after=2)
    body, request = api.completion_request(raw(COMPLETION))
    with pytest.raises(APIError) as error:
        asyncio.run(api.answer(body, request, time.monotonic() + 0.2))
    assert error_response(error.value)[0] == 504
    assert api.engine.aborted == [request.request_id]


def test_a_deadline_far_away_changes_nothing():
    api = make_api()
    body, request = api.completion_request(raw({"prompt": "hi", "max_tokens": 3}))
    answer = asyncio.run(api.answer(body, request, time.monotonic() + 60))
    assert answer.choices[0].text == "Hello, wor" and api.engine.aborted == []


# ---- an engine that fails mid-request --------------------------------------------------------------------


class DyingEngine(FakeEngine):
    """Streams two tokens, then fails the way vLLM does when its engine process is killed; `dies` False: a bug
    that leaves the engine healthy."""

    def __init__(self, args: ServeArgs, dies: bool = True):
        super().__init__(args)
        self.dies = dies
        self.dead = False

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        yield GenerationChunk("Hel", 1)
        yield GenerationChunk("lo", 2)
        self.dead = self.dies
        raise RuntimeError("EngineCore encountered an issue")

    async def abort(self, request_id: str) -> None:
        if self.dead:
            raise RuntimeError("cannot abort: the engine is dead")
        await super().abort(request_id)

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("vLLM engine is dead: EngineCore died")


def dying_api(dies: bool = True) -> OpenAIAPI:
    args = ServeArgs(model_name="/models/fake", target_device="CPU")
    return OpenAIAPI(DyingEngine(args, dies), args)


def streamed_events(api: OpenAIAPI, body: dict[str, Any]) -> list[dict[str, Any]]:
    async def run() -> list[bytes]:
        parsed, request = api.completion_request(raw({**body, "stream": True}))
        return [piece async for piece in api.stream(parsed, request)]

    return events(asyncio.run(run()))


def test_an_engine_dying_mid_stream_ends_it_with_an_engine_dead_event():
    *texts, error = streamed_events(dying_api(), COMPLETION)
    assert [c["choices"][0]["text"] for c in texts] == ["Hel", "lo"]
    assert error == {"error": {"message": "vLLM engine is dead: EngineCore died", "type": "server_error",
                               "param": None, "code": "engine_dead"}}


def test_an_engine_dying_under_a_whole_answer_is_a_503():
    api = dying_api()
    body, request = api.completion_request(raw(COMPLETION))
    with pytest.raises(EngineDeadError) as error:
        asyncio.run(api.answer(body, request))
    assert error_response(error.value)[0] == 503


def test_an_engine_dying_under_a_legacy_stream_ends_it_with_an_error_line():
    api = dying_api()

    async def run() -> list[bytes]:
        _, requests = api.legacy_requests(raw({"prompt": "hi", "stream": True, "max_tokens": 20}))
        return [line async for line in api.legacy_stream(requests[0])]

    lines = [json.loads(line) for line in asyncio.run(run())]
    assert lines[:2] == [{"text": "Hel"}, {"text": "lo"}]
    assert lines[2]["error"]["code"] == "engine_dead"


def test_a_bug_mid_stream_is_a_logged_internal_error_event_and_stays_a_500_when_whole(caplog):
    *_, error = streamed_events(dying_api(dies=False), COMPLETION)
    assert error["error"]["code"] == "internal_error"
    assert "EngineCore" not in error["error"]["message"]  # internals stay in the log
    assert "failed mid-stream" in caplog.text and "EngineCore encountered an issue" in caplog.text
    api = dying_api(dies=False)
    body, request = api.completion_request(raw(COMPLETION))
    with pytest.raises(RuntimeError, match="EngineCore encountered an issue"):
        asyncio.run(api.answer(body, request))
