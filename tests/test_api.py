"""The HTTP API, end to end: a local Ray, the app deployed from a Serve config, clients over HTTP.

One suite for every engine, run in each engine's own environment (the engines of the environment running pytest,
or `--engine`).
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from tests.engine_cases import MAX_MODEL_LEN, SERVED_MODEL
from devtools.serve_rest import http_json

pytestmark = [pytest.mark.e2e, pytest.mark.engine_env]

LONG = MAX_MODEL_LEN - 64  # a generation that takes seconds on the tiny model


def running_requests(base_url: str) -> int:
    status, body = http_json("GET", f"{base_url}/health")
    assert status == 200, body
    return body["running_requests"]


def wait_idle(base_url: str, within: float) -> float:
    """Seconds until the engine holds no request; fails after `within`."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if running_requests(base_url) == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(f"engine still has running requests {within}s after the client left")


# ---- OpenAI endpoints --------------------------------------------------------------------------------------


def test_models_lists_the_served_model(client: openai.OpenAI):
    models = client.models.list()
    assert [m.id for m in models.data] == [SERVED_MODEL]


def test_completion_counts_tokens_and_stops_at_length(client: openai.OpenAI):
    result = client.completions.create(
        model=SERVED_MODEL, prompt="the model serve", max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    choice = result.choices[0]
    assert choice.finish_reason == "length"
    assert result.usage.completion_tokens == 12
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + 12
    assert choice.text


def test_streamed_completion_matches_the_whole_one(client: openai.OpenAI):
    kwargs = dict(model=SERVED_MODEL, prompt="a request to the cluster", max_tokens=16, temperature=0,
                  extra_body={"ignore_eos": True})
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == whole
    assert sum(1 for t in texts if t) >= 2, "expected one chunk per new text delta"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16


def test_stream_ends_with_done(base_url: str):
    body = {"model": SERVED_MODEL, "prompt": "time", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_stop_sequence_ends_the_text_with_reason_stop(client: openai.OpenAI):
    kwargs = dict(model=SERVED_MODEL, prompt="the engine", max_tokens=40, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs).choices[0].text
    stop = full[len(full) // 2 :][:2]
    assert stop.strip(), f"greedy output too short to pick a stop from: {full!r}"
    result = client.completions.create(**kwargs, stop=[stop])
    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].text == full[: full.index(stop)]


def test_seed_makes_sampling_repeatable(client: openai.OpenAI):
    kwargs = dict(model=SERVED_MODEL, prompt="node", max_tokens=16, temperature=1.0, extra_body={"ignore_eos": True})
    first = client.completions.create(**kwargs, seed=7).choices[0].text
    again = client.completions.create(**kwargs, seed=7).choices[0].text
    assert first == again


def test_chat_completion_uses_the_chat_template(client: openai.OpenAI):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    result = client.chat.completions.create(model=SERVED_MODEL, messages=messages, max_tokens=8,
                                            extra_body={"ignore_eos": True})
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 8
    # The template wraps each message in role markers: the prompt is longer than the raw words.
    assert result.usage.prompt_tokens > 6


def test_streamed_chat(client: openai.OpenAI):
    chunks = list(client.chat.completions.create(
        model=SERVED_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}, temperature=0,
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model=SERVED_MODEL, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert content == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8


# ---- the reference's legacy route ------------------------------------------------------------------------


def test_legacy_route_answers_text_list(base_url: str):
    status, body = http_json("POST", base_url, {"prompt": ["one", "two"], "max_tokens": 5, "temperature": 0})
    assert status == 200, body
    assert isinstance(body["text"], list) and len(body["text"]) == 2


def test_legacy_route_streams_json_lines(base_url: str):
    payload = {"prompt": "stream me", "stream": True, "max_tokens": 10, "temperature": 0}
    with httpx.stream("POST", base_url, json=payload, timeout=60) as response:
        assert response.status_code == 200
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines and all(set(line) == {"text"} for line in lines)
    status, whole = http_json("POST", base_url, {"prompt": "stream me", "max_tokens": 10, "temperature": 0})
    assert "".join(line["text"] for line in lines) == whole["text"][0]


# ---- errors ---------------------------------------------------------------------------------------------

BAD_REQUESTS = [
    ("/v1/completions", b"{not json", 400, "invalid_json"),
    ("/v1/completions", b"", 400, "invalid_json"),
    ("/v1/completions", {"model": SERVED_MODEL}, 400, "invalid_request"),  # no prompt
    ("/v1/completions", {"model": SERVED_MODEL, "prompt": "x", "max_tokens": "many"}, 400, "invalid_request"),
    ("/v1/completions", {"model": SERVED_MODEL, "prompt": "x", "max_tokens": -3}, 400, "invalid_request"),
    ("/v1/completions", {"model": SERVED_MODEL, "prompt": "x", "max_tokens": MAX_MODEL_LEN}, 400,
     "context_length_exceeded"),
    ("/v1/completions", {"model": SERVED_MODEL, "prompt": "word " * (MAX_MODEL_LEN * 2)}, 400,
     "context_length_exceeded"),
    ("/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model_not_found"),
    ("/v1/completions", {"model": SERVED_MODEL, "prompt": "x", "n": 2}, 400, "invalid_request"),
    ("/v1/completions", {"model": SERVED_MODEL, "prompt": "x", "temperatur": 1}, 400, "invalid_request"),
    ("/v1/completions", {"model": SERVED_MODEL, "prompt": "x", "repetition_penalty": 1.3}, 400, "invalid_request"),
    ("/v1/chat/completions", {"model": SERVED_MODEL, "messages": []}, 400, "invalid_request"),
    ("/v1/chat/completions", {"model": SERVED_MODEL, "messages": [{"role": "robot", "content": "x"}]}, 400,
     "invalid_request"),
    ("", {"prompt": 5}, 400, "invalid_request"),
    ("", {"prompt": "x", "max_tokens": 0}, 400, "invalid_request"),
]


@pytest.mark.parametrize("path,body,status,code", BAD_REQUESTS)
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(base_url, path, body, status, code):
    got_status, got = http_json("POST", f"{base_url}{path}", body)
    assert got_status == status, got
    assert got["error"]["code"] == code
    assert got["error"]["message"] and got["error"]["type"] == "invalid_request_error"
    ok_status, _ = http_json("POST", f"{base_url}/v1/completions",
                             {"model": SERVED_MODEL, "prompt": "still there", "max_tokens": 2})
    assert ok_status == 200


def test_error_message_names_the_wrong_field(base_url: str):
    _, got = http_json("POST", f"{base_url}/v1/completions", {"model": SERVED_MODEL, "prompt": "x", "top_p": 7})
    assert got["error"]["param"] == "top_p" and "top_p" in got["error"]["message"]


def test_openai_sdk_raises_on_bad_request(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="missing", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=SERVED_MODEL, prompt="x", max_tokens=MAX_MODEL_LEN * 4)


# ---- disconnects and concurrency ------------------------------------------------------------------------


def test_disconnect_mid_stream_aborts_the_request_in_the_engine(base_url: str):
    body = {"model": SERVED_MODEL, "prompt": "long", "max_tokens": LONG, "stream": True, "ignore_eos": True}
    started = time.monotonic()
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
        assert running_requests(base_url) == 1
    # Left after three chunks: the engine must drop the request long before it could have finished.
    waited = wait_idle(base_url, within=5)
    full_time = _time_full_generation(base_url, LONG)
    assert waited < full_time / 2, (waited, full_time, time.monotonic() - started)


def test_disconnect_while_waiting_for_a_whole_answer_aborts_too(base_url: str):
    body = {"model": SERVED_MODEL, "prompt": "long", "max_tokens": LONG, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base_url}/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    wait_idle(base_url, within=5)


def _time_full_generation(base_url: str, max_tokens: int) -> float:
    start = time.monotonic()
    status, body = http_json("POST", f"{base_url}/v1/completions", {
        "model": SERVED_MODEL, "prompt": "long", "max_tokens": max_tokens, "ignore_eos": True}, timeout=300)
    assert status == 200 and body["usage"]["completion_tokens"] == max_tokens
    return time.monotonic() - start


def test_sixteen_concurrent_streams_complete_and_are_batched(base_url: str):
    async def scenario() -> tuple[list[int], int]:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=300)
        peak = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            async with httpx.AsyncClient(timeout=10) as http:
                while not done.is_set():
                    peak = max(peak, (await http.get(f"{base_url}/health")).json()["running_requests"])
                    await asyncio.sleep(0.02)

        async def one(i: int) -> int:
            stream = await client.completions.create(
                model=SERVED_MODEL, prompt=f"request {i}", max_tokens=96, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            usage = None
            async for chunk in stream:
                usage = chunk.usage or usage
            return usage.completion_tokens

        watcher = asyncio.create_task(watch())
        counts = await asyncio.gather(*(one(i) for i in range(16)))
        done.set()
        await watcher
        return counts, peak

    counts, peak = asyncio.run(scenario())
    assert counts == [96] * 16
    # The engine held many requests at once: the deployment's concurrency limit did not serialise them.
    assert peak >= 8, f"at most {peak} requests ran together"


def test_health_reports_ok(base_url: str):
    status, body = http_json("GET", f"{base_url}/health")
    assert status == 200 and body["status"] == "ok"
