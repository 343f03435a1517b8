"""What stands in front of the API, free of Ray: the key check, the body-size limit, admission with a bounded queue
(load shedding) and the per-request deadline, as one plain ASGI middleware (`Guard`).

Order per request: 401 without a valid key; 413 when Content-Length (or the bytes as they arrive) passes the limit,
before anything is parsed; then a slot (`Admission`), or 503 with Retry-After at once when every slot is taken and
the queue is full. The body is read before waiting for a slot, so a slow upload holds no slot. `/health` passes
untouched: probes need neither a key nor a slot.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from .errors import APIError, as_api_error, deadline_passed, error_response
from .auth import Keys

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The chat page holds no secret: its API calls carry the key.
OPEN_PATHS = ("/health", "/chat")
DEADLINE = "serving_app.deadline"  # scope key: the request's deadline (time.monotonic()), or None


class Admission:
    """At most `ongoing` requests run at once and at most `queued` wait for one of them, first come first served;
    the next is refused at once."""

    def __init__(self, ongoing: int, queued: int, retry_after_s: int):
        if ongoing < 1 or queued < 0:
            raise ValueError(f"admission needs ongoing >= 1 and queued >= 0, got {ongoing} and {queued}")
        self.ongoing, self.queued, self.retry_after_s = ongoing, queued, retry_after_s
        self._slots = asyncio.Semaphore(ongoing)
        self.running = 0
        self.waiting = 0

    @asynccontextmanager
    async def slot(self, deadline: Optional[float] = None) -> AsyncIterator[None]:
        if self._slots.locked() and self.waiting >= self.queued:
            raise APIError(
                503, f"the server is overloaded ({self.running} requests running, {self.waiting} queued): retry later",
                type_="server_error", code="overloaded", headers={"Retry-After": str(self.retry_after_s)},
            )
        self.waiting += 1
        try:
            if deadline is None:
                await self._slots.acquire()
            else:
                await asyncio.wait_for(self._slots.acquire(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise deadline_passed("waiting in the queue") from None
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()


def _header(scope: Scope, name: bytes) -> Optional[bytes]:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _route_path(scope: Scope) -> str:
    """The path below the application's route prefix (Serve passes it as root_path)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than {limit} bytes", code="request_too_large")


class _ClientGone(Exception):
    """The client disconnected while sending its body: there is nobody to answer."""


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # a chunked upload has no Content-Length: count as it arrives
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The app's receive: the body read already, then the client's own messages (its disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


async def send_error(send: Send, error: APIError) -> None:
    status, body = error_response(error)
    payload = body.model_dump_json().encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in as_api_error(error).headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class Guard:
    """The ASGI middleware (Starlette's `add_middleware(Guard, ...)` form: the app first)."""

    def __init__(self, app: ASGIApp, *, keys: Keys, admission: Admission, max_body_bytes: int,
                 timeout_s: Optional[float] = None):
        self.app, self.keys, self.admission = app, keys, admission
        self.max_body_bytes, self.timeout_s = max_body_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        scope[DEADLINE] = deadline
        admitted = False
        try:
            self.keys.check(_header(scope, b"authorization"))
            length = _header(scope, b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                raise _too_large(self.max_body_bytes)
            body = await _read_body(receive, self.max_body_bytes)
            async with self.admission.slot(deadline):
                admitted = True
                await self.app(scope, _replay(body, receive), send)
        except APIError as error:
            if admitted:  # the app's own, after its response may have started: not ours to answer
                raise
            await send_error(send, error)
        except _ClientGone:
            pass
