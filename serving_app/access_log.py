"""One structured line per generation request, and the `serving_requests` counter, from one plain ASGI middleware
(`AccessLog`), free of Ray.

The middleware sits outside everything else, so it sees every answer's real HTTP status, those of the guard in
front of the API (401, 413, 503) too. A request whose answer never finished sending is a client that left: status
499 (nginx's "client closed request"), finish reason `abort`, whatever the status line said. The API fills in what
only it knows (request ids, tokens, the first token's time, the finish reason) on the `RequestRecord` that the
middleware leaves in the scope (`RECORD`). No prompt or completion text is logged unless `include_text` (the serve
arg `access_log_text`): then the request body as the client sent it and the generated text.

The line is JSON on the replica process's stderr (Ray keeps it in the worker's `.err` log, logs/worker-*.err):
{"log": "access", "request_id", "application", "model", "route", "method", "path", "status", "finish_reason",
"prompt_tokens", "generated_tokens", "ttft_s", "duration_s", "disconnected"}.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

from .metrics import REQUESTS, Recorder

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

RECORD = "serving_app.record"  # scope key: this request's RequestRecord
CLIENT_CLOSED = 499

logger = logging.getLogger("serving_app.access")


def _stderr_lines() -> None:
    """The access lines alone on the process's own stderr, unformatted (each is one JSON object). Not through
    Serve's replica logger, which a replica's sys.stderr is redirected to: with RAY_SERVE_THROUGHPUT_OPTIMIZED it
    holds lines in memory until a thousand have come."""
    if not any(getattr(handler, "access_lines", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.__stderr__)
        handler.access_lines = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def route_of(scope: Scope) -> Optional[str]:
    """"openai" or "legacy" for the generation endpoints, None for the rest (health, model list)."""
    if scope.get("type") != "http" or scope.get("method") != "POST":
        return None
    path, prefix = scope["path"], scope.get("root_path", "")
    if prefix and path.startswith(prefix):  # Serve's scope: path includes the route prefix (root_path)
        path = path[len(prefix):]
    if path in ("/v1/completions", "/v1/chat/completions"):
        return "openai"
    if path in ("", "/"):
        return "legacy"
    return None


@dataclass
class RequestRecord:
    """What one HTTP request did; the API adds to it while it generates (a legacy batch: several generations)."""

    route: str
    started: float = field(default_factory=time.monotonic)
    request_ids: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    generated_tokens: dict[str, int] = field(default_factory=dict)  # per generation: the chunks carry running totals
    first_token: Optional[float] = None
    finish_reason: Optional[str] = None
    failed: bool = False  # an error answered after the 200 was sent (an error event, an error body under a 200)
    include_text: bool = False
    text: list[str] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def generation(self, request_id: str, prompt_tokens: int) -> None:
        self.request_ids.append(request_id)
        self.prompt_tokens += prompt_tokens
        self.generated_tokens[request_id] = 0

    def chunk(self, request_id: str, text: str, generated: int, finish_reason: Optional[str]) -> None:
        if self.first_token is None and generated > 0:
            self.first_token = time.monotonic()
        self.generated_tokens[request_id] = generated
        if finish_reason is not None:
            self.finish_reason = finish_reason
        if self.include_text and text:
            self.text.append(text)

    def fail(self) -> None:
        self.failed = True


class AccessLog:
    """ASGI middleware: a RequestRecord per generation request, finished (logged and counted) once its answer is
    sent or its client is gone."""

    def __init__(self, app: ASGIApp, *, application: str, model: str, recorder: Optional[Recorder] = None,
                 include_text: bool = False):
        self.app = app
        self.application = application
        self.model = model
        self.recorder = recorder
        self.include_text = include_text
        _stderr_lines()

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        route = route_of(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        record = RequestRecord(route=route, include_text=self.include_text)
        scope[RECORD] = record
        status: list[int] = []
        done = False

        async def receiving() -> Message:
            message = await receive()
            if record.include_text and message["type"] == "http.request":
                record.body += message.get("body", b"")
            return message

        async def sending(message: Message) -> None:
            nonlocal done
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done = True

        try:
            await self.app(scope, receiving if self.include_text else receive, sending)
        finally:
            # Not sent to the end (the app returned or was cancelled first): the client left.
            self.finish(record, status[0] if done else CLIENT_CLOSED, scope)

    def finish(self, record: RequestRecord, status: int, scope: Scope) -> None:
        disconnected = status == CLIENT_CLOSED
        if disconnected:
            reason = "abort"
        elif status >= 400 or record.failed:
            reason = "error"
        else:
            reason = record.finish_reason or "stop"
        generated = sum(record.generated_tokens.values())
        if self.recorder is not None:
            self.recorder.record(REQUESTS, 1, route=record.route, finished_reason=reason, status=str(status))
        now = time.monotonic()
        line: dict[str, Any] = {
            "log": "access",
            "request_id": ",".join(record.request_ids) or _header(scope, b"x-request-id"),
            "application": self.application,
            "model": self.model,
            "route": record.route,
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": status,
            "finish_reason": reason,
            "prompt_tokens": record.prompt_tokens,
            "generated_tokens": generated,
            "ttft_s": None if record.first_token is None else round(record.first_token - record.started, 6),
            "duration_s": round(now - record.started, 6),
            "disconnected": disconnected,
        }
        if record.include_text:
            line["request_body"] = record.body.decode("utf-8", "replace")
            line["completion"] = "".join(record.text)
        logger.info(json.dumps(line, ensure_ascii=False))


def _header(scope: Scope, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
