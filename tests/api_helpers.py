"""Driving `serving_app.api.OpenAIAPI` over a fake engine without Ray: parse, answer, stream (shared by the API's
unit tests)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable

from serving_app.api import OpenAIAPI
from serving_app.serve_args import ServeArgs
from tests.fake_engine import FakeEngine

MODEL = "fake-model"


def make_api(**engine: Any) -> OpenAIAPI:
    args = ServeArgs(model_name="/models/fake", served_model_name=MODEL, target_device="CPU", max_new_tokens=32)
    return OpenAIAPI(FakeEngine(args, **engine), args)


def raw(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def parser(api: OpenAIAPI, path: str) -> Callable[[bytes], Any]:
    return {"/v1/completions": api.completion_request, "/v1/chat/completions": api.chat_request,
            "": api.legacy_requests}[path]


def whole(api: OpenAIAPI, path: str, body: Any) -> dict[str, Any]:
    """The whole (non-streamed) answer's JSON."""
    parsed, prepared = parser(api, path)(raw(body))
    answer = api.legacy(prepared) if path == "" else api.answer(parsed, prepared)
    return json.loads(asyncio.run(answer).model_dump_json())


def stream(api: OpenAIAPI, path: str, body: Any) -> AsyncIterator[bytes]:
    parsed, prepared = parser(api, path)(raw(body))
    return api.legacy_stream(prepared[0]) if path == "" else api.stream(parsed, prepared)


def streamed(api: OpenAIAPI, path: str, body: Any) -> list[bytes]:
    """Every piece a streamed answer writes."""
    async def collect() -> list[bytes]:
        return [piece async for piece in stream(api, path, body)]

    return asyncio.run(collect())


def events(pieces: list[bytes]) -> list[dict[str, Any]]:
    """Server-sent events' JSON, checking the framing and the closing [DONE]."""
    assert all(p.startswith(b"data: ") and p.endswith(b"\n\n") for p in pieces), pieces
    assert pieces[-1] == b"data: [DONE]\n\n"
    return [json.loads(p[len(b"data: "):]) for p in pieces[:-1]]
