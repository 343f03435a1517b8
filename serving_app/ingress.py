"""The Ray Serve application: one deployment that owns an engine and serves the HTTP API.

A Serve config (KubeRay's serveConfigV2) deploys it with `import_path: serving_app:typed_app_builder` and the
`args` that `serving_app.serve_args.ServeArgs` validates.
"""

# No `from __future__ import annotations`: Serve's ingress re-signs the route methods, and FastAPI (0.165, the CPU
# images') then cannot resolve a string annotation such as "Request" and asks for a `request` query parameter.
import asyncio
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from ray import serve
from ray.serve import Application

from .access_log import RECORD, AccessLog
from .api import OpenAIAPI
from .errors import ANSWERED_ERRORS, as_api_error, error_response
from .auth import ENV as API_KEYS_ENV, APIKeys
from .engines.base import EngineDeadError
from .limits import DEADLINE, Guard
from .metrics import REQUESTS, MetricLabels, Recorder, ray_sink
from .placement import deployment_options
from .replica import ModelReplica
from .serve_args import parse_serve_args

logger = logging.getLogger("ray.serve")

app = FastAPI(title="serving_app", docs_url=None, redoc_url=None)


class _BarePrefixIsRoot:
    """`POST /cpu` (no trailing slash) reaches the legacy route at `/cpu/` instead of a 307 redirect, which
    clients following it would turn into a GET. Plain ASGI: a BaseHTTPMiddleware would buffer streams."""

    def __init__(self, asgi_app: Any):
        self.asgi_app = asgi_app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("root_path") and scope["path"] == scope["root_path"]:
            scope = {**scope, "path": scope["path"] + "/"}
        await self.asgi_app(scope, receive, send)


app.add_middleware(_BarePrefixIsRoot)


_JSON = "application/json"
# The chat page (GET <route>/chat): static, read once; it calls this application's own API from the browser.
_CHAT_PAGE = (Path(__file__).parent / "chat_page" / "index.html").read_bytes()


def chat_page() -> Response:
    """The chat page (serving_app/chat_page/), served by every application at <route>/chat."""
    return Response(_CHAT_PAGE, media_type="text/html; charset=utf-8")


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(body: BaseModel, status: int = 200, headers: Optional[dict[str, str]] = None) -> Response:
    return Response(body.model_dump_json(), status_code=status, media_type=_JSON, headers=headers)


async def _answered_error(_: Request, error: Exception) -> Response:
    status, body = error_response(error)
    return _json(body, status, as_api_error(error).headers)


for _error_type in ANSWERED_ERRORS:
    app.add_exception_handler(_error_type, _answered_error)


# A whole (non-streamed) answer that is not ready after this long starts its response and sends a JSON-insignificant
# space every so often until it is: see _whole_answer.
_HEARTBEAT_AFTER_S = 1.0
_HEARTBEAT_EVERY_S = 1.0


async def _whole_answer(request: Request, answer: Awaitable[BaseModel]) -> Response:
    """A non-streamed answer, abandoned as soon as the client disconnects: cancelling it aborts the engine's request.

    Serve's Python proxy cancels the handler on a disconnect; behind HAProxy (direct ingress) the replica only learns
    of it when HAProxy drops the server connection, which it does when it has bytes to pass to the departed client.
    So a slow answer starts its 200 response early and sends a space every second (leading whitespace is valid
    JSON). An error after that point comes as an OpenAI error body under the 200 already sent.
    """
    work = asyncio.ensure_future(answer)

    async def client_left() -> None:
        try:
            while (await request.receive())["type"] != "http.disconnect":
                pass  # the body was read already: only the disconnect can come
        except Exception:  # a server that cannot tell: rely on the heartbeat
            await asyncio.Event().wait()

    watcher = asyncio.ensure_future(client_left())
    try:
        await asyncio.wait({work, watcher}, timeout=_HEARTBEAT_AFTER_S, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        raise
    finally:
        watcher.cancel()  # StreamingResponse listens for the disconnect itself from here on
    if work.done():
        return _json(work.result())  # errors raise here and get their own status
    if watcher.done():  # the client left
        work.cancel()
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"

    async def body() -> Any:
        try:
            while not (await asyncio.wait({work}, timeout=_HEARTBEAT_EVERY_S))[0]:
                yield b" "
            try:
                payload = work.result()
            except ANSWERED_ERRORS as error:
                payload = error_response(error)[1]
                if request.scope.get(RECORD) is not None:
                    request.scope[RECORD].fail()
            yield payload.model_dump_json().encode()
        finally:
            work.cancel()  # the client left (the stream was cancelled): abort the generation

    return StreamingResponse(body(), media_type=_JSON)


async def _openai_answer(request: Request, api: OpenAIAPI, parse: Callable[[bytes], Any]) -> Response:
    """A completion or chat completion: server-sent events when the body asks to stream, else the whole answer."""
    body, generation = await api.prepare(parse, await request.body())
    deadline, record = request.scope.get(DEADLINE), request.scope.get(RECORD)
    if body.stream:
        return StreamingResponse(api.stream(body, generation, deadline, record), media_type="text/event-stream",
                                 headers=_SSE_HEADERS)
    return await _whole_answer(request, api.answer(body, generation, deadline, record))


@serve.deployment(
    name="LLMServer",
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress(app)
class LLMServer:
    async def __init__(self, raw_args: dict[str, Any]):
        replica = await ModelReplica.start(raw_args)
        self.args, self.engine, self.api, self.admission = replica.args, replica.engine, replica.api, replica.admission
        keys = APIKeys.from_env()
        if not keys.required:
            logger.warning("%s is not set: anyone who reaches this endpoint can use it", API_KEYS_ENV)
        # Here, not at import: the guard needs this replica's args and keys, and Starlette builds its middleware
        # stack on the app's first call (Serve's lifespan startup), which comes after __init__.
        app.add_middleware(Guard, keys=keys, admission=self.admission, max_body_bytes=self.args.max_request_bytes,
                           timeout_s=self.args.request_timeout_s)
        # Outermost (added last), so it sees the guard's answers too.
        app.add_middleware(AccessLog, application=serve.get_replica_context().app_name,
                           model=self.args.served_model_name, include_text=self.args.access_log_text,
                           recorder=Recorder(ray_sink(), MetricLabels.of(self.args), [REQUESTS]))

    async def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy so it is replaced."""
        await self.engine.check_health()

    @app.get("/health")
    async def health(self) -> Response:
        try:
            await self.engine.check_health()
        except EngineDeadError as error:
            return JSONResponse({"status": "dead", "error": str(error)}, status_code=503)
        stats = self.engine.stats()
        return JSONResponse({"status": "ok", "running_requests": stats.running_requests,
                             "waiting_requests": stats.waiting_requests, "admitted_requests": self.admission.running,
                             "queued_requests": self.admission.waiting, **stats.extra})

    @app.get("/chat")
    async def chat_page(self) -> Response:
        return chat_page()

    @app.get("/v1/models")
    async def models(self) -> Response:
        return _json(self.api.models())

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await _openai_answer(request, self.api, self.api.completion_request)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await _openai_answer(request, self.api, self.api.chat_request)

    @app.post("/")
    async def legacy(self, request: Request) -> Response:
        """The legacy chatbot API (serving_app.protocol), kept for its existing client."""
        body, generations = await self.api.prepare(self.api.legacy_requests, await request.body())
        deadline, record = request.scope.get(DEADLINE), request.scope.get(RECORD)
        if body.stream:
            return StreamingResponse(self.api.legacy_stream(generations[0], deadline, record),
                                     media_type="application/x-ndjson")
        return await _whole_answer(request, self.api.legacy(generations, deadline, record))

    async def __del__(self):
        engine = getattr(self, "engine", None)  # absent when __init__ failed
        if engine is not None:
            await engine.shutdown()


def typed_app_builder(raw_args: dict[str, Any]) -> Application:
    """Serve's application builder: validates `args` before anything starts, so a typo fails the deploy."""
    args = parse_serve_args(dict(raw_args or {}))
    return LLMServer.options(**deployment_options(args)).bind(args.model_dump(mode="json"))
