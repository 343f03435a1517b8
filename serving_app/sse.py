"""The streamed events (server-sent events of the OpenAI API, JSON lines of the legacy one), and their per-token
fast path.

A streamed completion sends one event per engine step per request: at 256 streams on an H200 that is ~15k events a
second from a replica whose one event-loop core is the limit, and building each as a pydantic model and dumping it
(with the wrap serializers that drop null keys) was ~7 % of that core (py-spy, benchmarks/RESULTS.md issue 18).
`TextEvents` renders a request's text event once through pydantic, with a sentinel for the text, and from then on
only serializes the new text into that template: the same bytes, since the template is pydantic's own output and
the text is serialized by pydantic-core's encoder.
"""

from __future__ import annotations

from typing import Callable

from pydantic import BaseModel
from pydantic_core import to_json

SSE_DONE = b"data: [DONE]\n\n"


def sse(payload: BaseModel) -> bytes:
    return b"data: " + payload.model_dump_json().encode() + b"\n\n"


# Text no tokenizer produces, so it cannot already be in the id or the model's name.
_SENTINEL = "\x00serving_app text\x00"
_SENTINEL_JSON = to_json(_SENTINEL)


def json_line(payload: BaseModel) -> bytes:
    """One line of a JSON-lines stream (the legacy API's)."""
    return payload.model_dump_json().encode() + b"\n"


class TextEvents:
    """`event(text)` == `render(build(text))` for a non-empty text with no finish reason (the chunks in between)."""

    def __init__(self, build: Callable[[str], BaseModel], render: Callable[[BaseModel], bytes] = sse):
        rendered = render(build(_SENTINEL))
        before, found, after = rendered.partition(_SENTINEL_JSON)
        if not found or _SENTINEL_JSON in after:
            raise ValueError("a streamed event's body must hold its text exactly once")
        self._before, self._after = before, after

    def event(self, text: str) -> bytes:
        return self._before + to_json(text) + self._after
