"""The guard in front of the API (serving_app.limits) driven as plain ASGI, and the queue settings Serve gets.
No Ray, no model: the app behind the guard is a stub that records what reached it."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

import pytest

from serving_app.auth import APIKeys
from serving_app.limits import DEADLINE, Admission, Guard
from serving_app.placement import deployment_options
from serving_app.serve_args import ServeArgs, parse_serve_args

KEY = "test-key-0123456789"


class App:
    """Answers 200 with the body it received; `hold` makes each request wait until released."""

    def __init__(self, hold: bool = False):
        self.hold = hold
        self.release = asyncio.Event()
        self.bodies: list[bytes] = []
        self.deadlines: list[Optional[float]] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        message = await receive()
        self.bodies.append(message["body"])
        self.deadlines.append(scope.get(DEADLINE))
        if self.hold:
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def guard(app: App, *, ongoing: int = 4, queued: int = 2, max_body: int = 1024, timeout_s: Optional[float] = None,
          keys: tuple[str, ...] = (KEY,)) -> Guard:
    return Guard(app, keys=APIKeys(keys), admission=Admission(ongoing, queued, retry_after_s=3),
                 max_body_bytes=max_body, timeout_s=timeout_s)


async def call(asgi: Guard, path: str = "/llm/v1/completions", body: bytes = b"{}", key: Optional[str] = KEY,
               chunks: Optional[list[bytes]] = None, content_length: bool = True) -> dict[str, Any]:
    """One request through the guard; returns status, headers, body and how many receive() calls were made."""
    headers = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    parts = chunks if chunks is not None else [body]
    if content_length:
        headers.append((b"content-length", str(sum(map(len, parts))).encode()))
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "/llm", "headers": headers}
    messages = [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)]
    received = 0
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict:
        nonlocal received
        received += 1
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # then only a disconnect could come
        return {}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            answer["body"] += message.get("body", b"")

    await asyncio.wait_for(asyncio.ensure_future(asgi(scope, receive, send)), 5)
    answer["received"] = received
    return answer


def error_of(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["headers"]["content-type"] == "application/json"
    return json.loads(answer["body"])["error"]


def test_an_api_route_without_a_valid_key_is_a_401_and_never_reaches_the_app():
    app = App()

    async def run() -> list[dict[str, Any]]:
        asgi = guard(app)
        return [await call(asgi, key=None), await call(asgi, key="wrong"), await call(asgi, path="/llm", key=None),
                await call(asgi, path="/llm/v1/models", key=None)]

    for answer in asyncio.run(run()):
        assert answer["status"] == 401 and answer["headers"]["www-authenticate"] == "Bearer"
        assert error_of(answer)["code"] == "invalid_api_key"
        assert answer["received"] == 0  # refused before its body was read
    assert app.bodies == []


def test_health_is_open_and_a_good_key_passes():
    app = App()

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        asgi = guard(app)
        return await call(asgi, path="/llm/health", key=None), await call(asgi, body=b'{"prompt": "hi"}')

    health, completion = asyncio.run(run())
    assert (health["status"], completion["status"]) == (200, 200)
    assert app.bodies == [b"{}", b'{"prompt": "hi"}']


def test_a_declared_body_over_the_limit_is_a_413_before_it_is_read():
    app = App()
    answer = asyncio.run(call(guard(app, max_body=1024), body=b"x" * 1025))
    assert answer["status"] == 413 and error_of(answer)["code"] == "request_too_large"
    assert answer["received"] == 0 and app.bodies == []


def test_a_chunked_body_is_cut_off_where_it_passes_the_limit():
    app = App()
    chunks = [b"x" * 600, b"x" * 600, b"x" * 600]
    answer = asyncio.run(call(guard(app, max_body=1024), chunks=chunks, content_length=False))
    assert answer["status"] == 413 and answer["received"] == 2 and app.bodies == []


def test_a_body_in_several_chunks_reaches_the_app_whole():
    app = App()
    answer = asyncio.run(call(guard(app, max_body=1024), chunks=[b'{"prompt":', b' "hi"}'], content_length=False))
    assert answer["status"] == 200 and app.bodies == [b'{"prompt": "hi"}']


def test_beyond_the_running_and_queued_requests_one_more_is_shed_at_once_with_retry_after():
    app = App(hold=True)

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]], Admission]:
        asgi = guard(app, ongoing=2, queued=1)
        admitted = [asyncio.ensure_future(call(asgi)) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert (asgi.admission.running, asgi.admission.waiting) == (2, 1)
        shed = [await call(asgi) for _ in range(2)]
        app.release.set()
        return list(await asyncio.gather(*admitted)), shed, asgi.admission

    admitted, shed, admission = asyncio.run(run())
    assert [a["status"] for a in admitted] == [200, 200, 200]
    for answer in shed:
        assert answer["status"] == 503 and answer["headers"]["retry-after"] == "3"
        error = error_of(answer)
        assert (error["type"], error["code"]) == ("server_error", "overloaded")
        assert "2 requests running, 1 queued" in error["message"]
    assert (admission.running, admission.waiting) == (0, 0)


def test_a_request_whose_deadline_passes_in_the_queue_is_a_504_and_frees_its_place():
    app = App(hold=True)

    async def run() -> tuple[dict[str, Any], Guard]:
        asgi = guard(app, ongoing=1, queued=1, timeout_s=0.2)
        running = asyncio.ensure_future(call(asgi))
        await asyncio.sleep(0.05)
        timed_out = await call(asgi)
        app.release.set()
        await running
        return timed_out, asgi

    timed_out, asgi = asyncio.run(run())
    assert timed_out["status"] == 504 and error_of(timed_out)["code"] == "timeout"
    assert (asgi.admission.running, asgi.admission.waiting) == (0, 0)
    assert len(app.deadlines) == 1 and app.deadlines[0] is not None  # the app gets the deadline to keep


def test_a_queued_request_whose_client_goes_away_frees_its_place():
    app = App(hold=True)

    async def run() -> Admission:
        asgi = guard(app, ongoing=1, queued=1)
        running = asyncio.ensure_future(call(asgi))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(call(asgi))
        await asyncio.sleep(0.05)
        assert asgi.admission.waiting == 1
        queued.cancel()  # what the server does to a request whose client disconnected
        await asyncio.gather(queued, return_exceptions=True)
        assert asgi.admission.waiting == 0
        app.release.set()
        await running
        return asgi.admission

    admission = asyncio.run(run())
    assert (admission.running, admission.waiting) == (0, 0)


def test_admission_refuses_impossible_sizes():
    with pytest.raises(ValueError, match="ongoing >= 1"):
        Admission(0, 1, 1)


# ---- the queue settings ------------------------------------------------------------------------------------


def test_the_queue_defaults_to_half_the_ongoing_requests_and_can_be_set():
    assert ServeArgs(model_name="m", max_ongoing_requests=64).queue_limit == 32
    assert ServeArgs(model_name="m", max_ongoing_requests=1).queue_limit == 1
    assert ServeArgs(model_name="m", max_ongoing_requests=64, max_queued_requests=0).queue_limit == 0
    # A default stays out of rendered serve configs: only what a stack sets is written.
    assert "max_queued_requests" not in ServeArgs(model_name="m").model_dump(exclude_none=True, exclude_defaults=True)


def test_serve_admits_more_than_the_replica_so_the_replica_sheds_with_its_own_body():
    options = deployment_options(parse_serve_args({"model_name": "m", "max_ongoing_requests": 8,
                                                   "max_queued_requests": 4, "retry_after_s": 2}))
    assert options["max_ongoing_requests"] == 24  # twice the 8 + 4 the replica admits
    assert options["max_queued_requests"] == 12  # Serve's own queue: bounded too
    assert options["backpressure_config"] == {"status_code": 503, "retry_after_s": 2}


@pytest.mark.parametrize("args,message", [
    ({"max_queued_requests": -1}, "args.max_queued_requests: Input should be greater than or equal to 0"),
    ({"max_request_bytes": 10}, "args.max_request_bytes: Input should be greater than or equal to 1024"),
    ({"request_timeout_s": 0}, "args.request_timeout_s: Input should be greater than 0"),
    ({"max_tokens_limit": 100, "max_new_tokens": 200}, "args.max_new_tokens: 200 is above max_tokens_limit 100"),
])
def test_bad_limits_are_refused_naming_the_field(args, message):
    with pytest.raises(ValueError) as error:
        parse_serve_args({"model_name": "m", **args})
    assert message in str(error.value)
