"""The HTTP API's logic (`serving_app.api.OpenAIAPI`) without Ray or a model: a fake engine that streams fixed tokens.

The wire shapes asserted here are the ones `tests/test_api.py` checks end to end through Ray Serve.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from serving_app.errors import APIError, error_response
from serving_app.engines.base import EngineDeadError
from tests.api_helpers import MODEL, events, make_api, parser, raw, stream, streamed, whole
from tests.fake_engine import MAX_MODEL_LEN, TOKENS, FakeTokenizer

# ---- models and completions ------------------------------------------------------------------------------


def test_models_lists_the_served_id():
    models = json.loads(make_api().models().model_dump_json())
    assert models["object"] == "list"
    assert [(m["id"], m["object"], m["max_model_len"]) for m in models["data"]] == [(MODEL, "model", MAX_MODEL_LEN)]


def test_whole_completion_has_openai_keys_and_counts_tokens():
    api = make_api()
    body = whole(api, "/v1/completions", {"model": MODEL, "prompt": "hi there", "max_tokens": 3})
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "text_completion" and body["model"] == MODEL and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"index": 0, "text": "Hello, wor", "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11}
    assert api.engine.requests[0].prompt_token_ids == list(b"hi there")


def test_completion_that_ends_by_itself_finishes_with_stop():
    body = whole(make_api(), "/v1/completions", {"prompt": "hi"})
    assert body["choices"][0]["text"] == "".join(TOKENS) and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len(TOKENS)


def test_streamed_completion_with_usage():
    api = make_api()
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True}
    chunks = events(streamed(api, "/v1/completions", body))
    *texts, usage = chunks
    assert all(set(c) == {"id", "object", "created", "model", "choices"} for c in texts)
    assert len({(c["id"], c["created"]) for c in chunks}) == 1 and chunks[0]["object"] == "text_completion"
    assert [c["choices"] for c in texts] == [
        [{"index": 0, "text": TOKENS[i % len(TOKENS)], "logprobs": None, "finish_reason": "length" if i == 5 else None}]
        for i in range(6)
    ]
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8}
    assert api.engine.aborted == []


def test_stream_without_include_usage_has_no_usage_chunk():
    chunks = events(streamed(make_api(), "/v1/completions", {"prompt": "hi", "stream": True}))
    assert all("usage" not in c and c["choices"] for c in chunks)
    assert chunks[-1]["choices"][0] == {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}


# ---- chat ------------------------------------------------------------------------------------------------

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_chat_renders_the_template_and_answers_as_the_assistant():
    api = make_api()
    body = whole(api, "/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 2})
    assert api.engine.tokenizer.rendered == [[{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": "hi"}]]
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                                "logprobs": None, "finish_reason": "length"}]
    prompt = len("<system>be brief<user>hi<assistant>")
    assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": 2, "total_tokens": prompt + 2}


def test_streamed_chat_announces_the_role_then_sends_content_deltas():
    body = {"messages": CHAT, "stream": True, "stream_options": {"include_usage": True}}
    *chunks, usage = events(streamed(make_api(), "/v1/chat/completions", body))
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert [c["choices"] for c in chunks] == (
        [[{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]]
        + [[{"index": 0, "delta": {"content": t}, "finish_reason": None}] for t in TOKENS]
        + [[{"index": 0, "delta": {}, "finish_reason": "stop"}]]
    )
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(TOKENS)


def test_chat_template_from_tokenizer_config_is_rendered_when_the_tokenizer_cannot():
    class OldTokenizer(FakeTokenizer):  # BigDL's transformers: the template only in init_kwargs
        chat_template = None
        init_kwargs = {"chat_template": "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[assistant]"}

    api = make_api(tokenizer=OldTokenizer())
    whole(api, "/v1/chat/completions", {"messages": [{"role": "user", "content": "yo"}], "max_tokens": 1})
    assert api.engine.requests[0].prompt_token_ids == list(b"[user]yo[assistant]")


def test_chat_without_a_template_is_refused():
    class PlainTokenizer(FakeTokenizer):
        chat_template = None

    with pytest.raises(APIError) as error:
        make_api(tokenizer=PlainTokenizer()).chat_request(raw({"messages": CHAT}))
    assert (error.value.status, error.value.code) == (400, "no_chat_template")


# ---- the legacy chatbot API ------------------------------------------------------------------------------


def test_legacy_route_answers_one_text_per_prompt():
    api = make_api()
    assert whole(api, "", {"prompt": ["one", "two"], "max_new_tokens": 2}) == {"text": ["Hello", "Hello"]}
    assert [r.sampling.max_tokens for r in api.engine.requests] == [2, 2]


def test_legacy_stream_is_json_lines_of_new_text():
    lines = streamed(make_api(), "", {"prompt": "one", "stream": True, "max_tokens": 3})
    assert all(line.endswith(b"\n") for line in lines)
    assert [json.loads(line) for line in lines] == [{"text": t} for t in TOKENS[:3]]


# ---- errors ----------------------------------------------------------------------------------------------

BAD = [
    ("/v1/completions", b"{not json", "invalid_json", None),
    ("/v1/completions", b"  ", "invalid_json", None),
    ("/v1/completions", {"prompt": "x", "temperatur": 1}, "invalid_request", "temperatur"),
    ("/v1/completions", {"prompt": "x", "top_p": 7}, "invalid_request", "top_p"),
    ("/v1/completions", {"prompt": "x" * MAX_MODEL_LEN}, "context_length_exceeded", "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": MAX_MODEL_LEN}, "context_length_exceeded", "max_tokens"),
    ("/v1/completions", {"prompt": ""}, None, "prompt"),
    ("/v1/completions", {"prompt": [5, 256, -1]}, None, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "tone": "kind"}]}, "invalid_request",
     "messages.0.tone"),
    ("", {"prompt": "x", "max_tokens": 0}, "invalid_request", "max_tokens"),
    ("", {"prompt": ""}, None, "prompt"),
]


@pytest.mark.parametrize("path,body,code,param", BAD)
def test_bad_input_is_a_400_that_names_the_problem(path, body, code, param):
    api = make_api()
    with pytest.raises(APIError) as error:
        parser(api, path)(raw(body))
    status, response = error_response(error.value)
    got = json.loads(response.model_dump_json())
    assert status == 400 and set(got) == {"error"}
    assert got["error"] == {"message": error.value.message, "type": "invalid_request_error", "param": param,
                            "code": code}
    assert got["error"]["message"] and (param is None or param.split(".")[-1] in got["error"]["message"])
    assert api.engine.requests == []


def test_out_of_range_token_ids_are_listed():
    with pytest.raises(APIError, match=r"out of range \[0, 256\): \[256, -1\]"):
        make_api().completion_request(raw({"prompt": [5, 256, -1]}))


def test_unknown_model_is_a_404_naming_the_served_one():
    with pytest.raises(APIError) as error:
        make_api().completion_request(raw({"model": "gpt-4", "prompt": "x"}))
    status, response = error_response(error.value)
    assert status == 404
    assert response.error.code == "model_not_found" and response.error.param == "model"
    assert "'gpt-4'" in response.error.message and repr(MODEL) in response.error.message


def test_a_dead_engine_is_a_503_server_error():
    status, response = error_response(EngineDeadError("engine loop died"))
    assert status == 503
    assert json.loads(response.model_dump_json()) == {
        "error": {"message": "engine loop died", "type": "server_error", "param": None, "code": "engine_dead"}}


# ---- a consumer that leaves ------------------------------------------------------------------------------


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "hi", "stream": True, "max_tokens": 20, "ignore_eos": True}),
    ("/v1/chat/completions", {"messages": CHAT, "stream": True, "max_tokens": 20, "ignore_eos": True}),
    ("", {"prompt": "hi", "stream": True, "max_tokens": 20}),
])
def test_a_stream_read_no_further_aborts_the_request(path, body):
    api = make_api()

    async def read_two_then_leave() -> None:
        pieces = stream(api, path, body)
        await pieces.__anext__()
        await pieces.__anext__()
        await pieces.aclose()
        assert api.engine.aborted == [api.engine.requests[0].request_id]

    asyncio.run(read_two_then_leave())


def test_a_cancelled_whole_answer_aborts_the_request():
    api = make_api(hold_after=2)

    async def give_up() -> None:
        body, request = api.completion_request(raw({"prompt": "hi", "max_tokens": 20}))
        task = asyncio.ensure_future(api.answer(body, request))
        while not api.engine.requests:
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert api.engine.aborted == [request.request_id]

    asyncio.run(give_up())
