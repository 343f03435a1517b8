"""serving_app/sse.py: the per-token events from a template are the bytes pydantic renders, for both streams."""

from __future__ import annotations

import json

import pytest

from serving_app.protocol import (
    ChatCompletionResponseStreamChoice, ChatCompletionStreamResponse, CompletionResponseChoice,
    CompletionStreamResponse, LegacyStreamChunk,
)
from serving_app.sse import TextEvents, json_line, sse

HEAD = {"id": "cmpl-3f2a", "created": 1764633600, "model": "meta-llama/Llama-2-7b-chat-hf"}
BUILDERS = {
    "completion": lambda text: CompletionStreamResponse.model_construct(
        **HEAD, choices=[CompletionResponseChoice.of(text, None)]),
    "chat": lambda text: ChatCompletionStreamResponse.model_construct(
        **HEAD, choices=[ChatCompletionResponseStreamChoice.of(text, None)]),
}
TEXTS = ["Paris", " the", "\n", "\"quoted\" \\ back", "tab\there\r", "\x00\x01\x1f\x7f", "é ü 中文 🙂", "\u2028\u2029",
         "</script>", "{\"json\": [1]}", "\ufffd", "a" * 5000]


@pytest.mark.parametrize("endpoint", BUILDERS)
@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_a_text_event_is_what_pydantic_renders(endpoint, text):
    build = BUILDERS[endpoint]
    event = TextEvents(build).event(text)
    assert event == sse(build(text))
    body = json.loads(event.removeprefix(b"data: ").removesuffix(b"\n\n"))
    assert body["id"] == HEAD["id"] and body["choices"][0].get("finish_reason") is None


def test_a_body_without_its_text_is_refused():
    with pytest.raises(ValueError, match="text exactly once"):
        TextEvents(lambda text: CompletionStreamResponse.model_construct(
            **HEAD, choices=[CompletionResponseChoice.of("fixed", None)]))


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_a_legacy_line_is_what_pydantic_renders(text):
    build = lambda value: LegacyStreamChunk.model_construct(text=value)  # noqa: E731
    assert TextEvents(build, json_line).event(text) == LegacyStreamChunk(text=text).model_dump_json().encode() + b"\n"
