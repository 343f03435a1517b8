"""serving_app/access_log.py without Ray: the access line and the `serving_requests` counter per generation request,
from the real HTTP status, with the API (and a fake engine) filling in tokens and finish reasons."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

import pytest

from serving_app.access_log import RECORD, AccessLog, route_of
from serving_app.api import OpenAIAPI
from serving_app.errors import error_response
from serving_app.metrics import REQUESTS, MetricLabels, Recorder
from serving_app.serve_args import ServeArgs
from tests.fake_engine import TOKENS, FakeEngine
from tests.fake_metrics import FakeSink

LABELS = MetricLabels(model_name="fake-model", engine="vllm", hardware="CPU")


def scope(path: str = "/llm/v1/completions", method: str = "POST", **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "/llm", "headers": [], **extra}


def call(app: Any, request_scope: dict[str, Any], body: bytes = b"{}") -> list[dict[str, Any]]:
    """Run one request through an ASGI app; what it sent."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # nothing more comes (a disconnect would)
        return {}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        try:
            await app(request_scope, receive, send)
        except asyncio.CancelledError:
            pass

    asyncio.run(run())
    return sent


def responding(status: int, finish: bool = True, cancel: bool = False):
    """An ASGI app that answers `status` (and stops before the last body unless `finish`, or is cancelled)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        if cancel:
            raise asyncio.CancelledError
        if finish:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def access(app: Any, sink: Optional[FakeSink] = None, **kwargs: Any) -> AccessLog:
    recorder = Recorder(sink, LABELS, [REQUESTS]) if sink is not None else None
    return AccessLog(app, application="llm", model="fake-model", recorder=recorder, **kwargs)


@pytest.mark.parametrize("path, method, route", [
    ("/llm/v1/completions", "POST", "openai"), ("/llm/v1/chat/completions", "POST", "openai"),
    ("/llm/", "POST", "legacy"), ("/llm", "POST", "legacy"), ("/llm/health", "GET", None),
    ("/llm/v1/models", "GET", None), ("/llm/", "GET", None),
])
def test_only_generation_requests_are_recorded(path, method, route):
    assert route_of(scope(path, method)) == route


@pytest.mark.parametrize("status, finish, cancel, counted_status, reason", [
    (200, True, False, "200", "stop"),
    (401, True, False, "401", "error"),  # the guard's answers are seen too: this middleware is outermost
    (503, True, False, "503", "error"),
    (200, False, False, "499", "abort"),  # the app returned before the last body: the client left
    (200, False, True, "499", "abort"),  # cancelled (Serve's proxy cancels a departed client's handler)
    (499, True, False, "499", "abort"),  # the whole-answer path's own "client closed request"
])
def test_each_request_is_counted_once_with_the_status_sent(access_lines, status, finish, cancel, counted_status, reason):
    sink = FakeSink()
    call(access(responding(status, finish, cancel), sink), scope())
    assert sink.records == [("serving_requests", 1, {**LABELS.tags(), "route": "openai", "status": counted_status,
                                                     "finished_reason": reason})]
    [line] = access_lines
    assert line["status"] == int(counted_status) and line["finish_reason"] == reason
    assert line["disconnected"] is (counted_status == "499")
    assert line["application"] == "llm" and line["model"] == "fake-model" and line["route"] == "openai"


def test_other_paths_pass_untouched(access_lines):
    sink = FakeSink()
    sent = call(access(responding(200), sink), scope("/llm/health", "GET"))
    assert sent[0]["status"] == 200 and sink.records == [] and access_lines == []


# ---- with the API: what only it knows ---------------------------------------------------------------------


def api_app(api: OpenAIAPI, hold: bool = False):
    """The ingress handler's part, in plain ASGI: parse, generate with the scope's record, send the answer."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raw = (await receive())["body"]
        record = scope[RECORD]
        try:
            body, generation = api.completion_request(raw)
        except Exception as error:
            status, payload = error_response(error)
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": payload.model_dump_json().encode()})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if body.stream:
            async for piece in api.stream(body, generation, None, record):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                if hold:
                    return  # the client left after the first event
            await send({"type": "http.response.body", "body": b""})
        else:
            answer = await api.answer(body, generation, None, record)
            await send({"type": "http.response.body", "body": answer.model_dump_json().encode()})

    return app


def make_api(**engine: Any) -> OpenAIAPI:
    args = ServeArgs(model_name="/models/fake", served_model_name="fake-model", target_device="CPU")
    return OpenAIAPI(FakeEngine(args, **engine), args)


def request_body(**fields: Any) -> bytes:
    return json.dumps({"model": "fake-model", "prompt": "hey", "max_tokens": 3, **fields}).encode()


def test_whole_and_streamed_answers_log_their_tokens_and_finish(access_lines):
    sink = FakeSink()
    app = access(api_app(make_api()), sink)
    call(app, scope(), request_body())
    call(app, scope(), request_body(stream=True, max_tokens=8))  # the fake engine stops after its 4 tokens
    whole, streamed = access_lines
    assert whole["request_id"].startswith("cmpl-") and whole["status"] == 200
    assert (whole["prompt_tokens"], whole["generated_tokens"], whole["finish_reason"]) == (3, 3, "length")
    assert (streamed["prompt_tokens"], streamed["generated_tokens"], streamed["finish_reason"]) == (3, 4, "stop")
    for line in access_lines:
        assert 0 <= line["ttft_s"] <= line["duration_s"]
        assert "request_body" not in line and "completion" not in line  # no text unless asked for
    assert sorted(tags["finished_reason"] for _, _, tags in sink.records) == ["length", "stop"]


def test_a_bad_request_and_a_departed_streaming_client(access_lines):
    sink = FakeSink()
    recorder = Recorder(sink, LABELS, [REQUESTS])
    for app, body in ((api_app(make_api()), request_body(max_tokens=-1)),
                      (api_app(make_api(), hold=True), request_body(stream=True))):
        call(AccessLog(app, application="llm", model="fake-model", recorder=recorder), scope(), body)
    bad, left = access_lines
    assert (bad["status"], bad["finish_reason"], bad["prompt_tokens"], bad["ttft_s"]) == (400, "error", 0, None)
    assert bad["request_id"] is None  # no generation began and the client sent no x-request-id
    assert (left["status"], left["finish_reason"], left["disconnected"]) == (499, "abort", True)
    assert [tags["status"] for _, _, tags in sink.records] == ["400", "499"]


def test_text_is_logged_only_when_enabled(access_lines):
    call(access(api_app(make_api()), include_text=True), scope(), request_body())
    [line] = access_lines
    assert json.loads(line["request_body"])["prompt"] == "hey"
    assert line["completion"] == "".join(TOKENS[:3])


def test_a_client_request_id_is_kept_when_no_generation_began(access_lines):
    call(access(responding(413)), scope(headers=[(b"x-request-id", b"abc")]))
    assert access_lines[0]["request_id"] == "abc"
