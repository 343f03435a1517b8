"""One structured line per generation request, and the `serving_requests` counter, from one plain ASGI middleware
(`AccessLog`), free of Ray.

The middleware sits outside everything else, so it sees every answer's real HTTP status, those of the guard in
front of the API (401, 413, 503) too. A request whose answer never finished sending is a client that left: status
499 (nginx's "client closed request"), finish reason `abort`, whatever the status line said. The API fills in what
only it knows (request ids, tokens, the first token's time, the finish reason) on the `RequestRecord` that the
middleware leaves in the scope (`RECORD`). No prompt or completion text is logged unless `include_text` (the serve
arg `access_log_text`): then the request body as the client sent it and the generated text.

Behind the router of several models (serving_app.router) the model's replica writes the line and counts the request
(`AccessLogger`, with its engine's labels: it alone knows the tokens); the router's own middleware logs only what
it answered itself (a missing key, an unknown model, a full model), marked by `RequestRecord.forwarded`.

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
OPENAI_ROUTE, LEGACY_ROUTE = "openai", "legacy"  # the `route` of lines and of serving_requests
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
        return OPENAI_ROUTE
    if path in ("", "/"):
        return LEGACY_ROUTE
    return None


@dataclass
class RequestRecord:
    """What one HTTP request did; the API adds to it while it generates (a legacy batch: several generations)."""

    route: str
    started: float = field(default_factory=time.monotonic)
    model: Optional[str] = None  # the logger's own model unless set (the router: the model the request named)
    forwarded: bool = False  # passed on to a model's replica, which logs it
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


class AccessLogger:
    """Finishes RequestRecords: the access line and the `serving_requests` count."""

    def __init__(self, *, application: str, model: Optional[str], recorder: Optional[Recorder] = None,
                 include_text: bool = False):
        self.application = application
        self.model = model
        self.recorder = recorder
        self.include_text = include_text
        _stderr_lines()

    def record(self, route: str) -> RequestRecord:
        return RequestRecord(route=route, include_text=self.include_text)

    def finish(self, record: RequestRecord, status: int, method: Optional[str], path: Optional[str],
               client_request_id: Optional[str] = None) -> None:
        disconnected = status == CLIENT_CLOSED
        if disconnected:
            reason = "abort"
        elif status >= 400 or record.failed:
            reason = "error"
        else:
            reason = record.finish_reason or "stop"
        if self.recorder is not None:
            # The recorder's own labels only: a model id a client sent must not mint new series.
            self.recorder.record(REQUESTS, 1, route=record.route, finished_reason=reason, status=str(status))
        line: dict[str, Any] = {
            "log": "access",
            "request_id": ",".join(record.request_ids) or client_request_id,
            "application": self.application,
            "model": record.model or self.model,
            "route": record.route,
            "method": method,
            "path": path,
            "status": status,
            "finish_reason": reason,
            "prompt_tokens": record.prompt_tokens,
            "generated_tokens": sum(record.generated_tokens.values()),
            "ttft_s": None if record.first_token is None else round(record.first_token - record.started, 6),
            "duration_s": round(time.monotonic() - record.started, 6),
            "disconnected": disconnected,
        }
        if record.include_text:
            line["request_body"] = record.body.decode("utf-8", "replace")
            line["completion"] = "".join(record.text)
        logger.info(json.dumps(line, ensure_ascii=False))


class AccessLog:
    """ASGI middleware: a RequestRecord per generation request, finished (logged and counted) once its answer is
    sent or its client is gone, unless it was forwarded to a model's replica that logs it."""

    def __init__(self, app: ASGIApp, *, application: str, model: Optional[str], recorder: Optional[Recorder] = None,
                 include_text: bool = False):
        self.app = app
        self.log = AccessLogger(application=application, model=model, recorder=recorder, include_text=include_text)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        route = route_of(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        record = self.log.record(route)
        scope[RECORD] = record
        status: list[int] = []
        done = False

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "http.request":
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
            await self.app(scope, receiving if record.include_text else receive, sending)
        finally:
            if not record.forwarded:
                # Not sent to the end (the app returned or was cancelled first): the client left.
                self.log.finish(record, status[0] if done else CLIENT_CLOSED, scope.get("method"),
                                scope.get("path"), _header(scope, b"x-request-id"))


def _header(scope: Scope, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None
