"""The Ray Serve application of several models behind one base URL: a router deployment (the HTTP ingress) and
one ModelServer deployment per model, which it calls through DeploymentHandles (serving_app.multi_model says what
passes between them). Serve allows one FastAPI ingress per application, so a model's deployment here is the
single-model LLMServer's engine and API without its HTTP routes. By default the router's replicas also run the
default model's engine (`router.hosts_default_model`): its requests are answered in the router's process, a hop
to another process less per streamed piece. A Serve config deploys it with `import_path:
serving_app:multi_model_app_builder` and the `args` that `serving_app.multi_model.MultiModelArgs` validates.
"""

# No `from __future__ import annotations`: FastAPI resolves the route signatures (see serving_app.ingress).
import logging
import time
from typing import Any, AsyncGenerator, AsyncIterator, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from .access_log import RECORD, AccessLog, AccessLogger
from .errors import ANSWERED_ERRORS, APIError
from .auth import ENV as API_KEYS_ENV, APIKeys
from .ingress import _answered_error, chat_page, _BarePrefixIsRoot, _json, _SSE_HEADERS, _whole_answer
from .hosted_autoscaling import HOSTED_REQUESTS
from .limits import Admission, Guard
from .metrics import REQUESTS, MetricLabels, Recorder, ray_sink
from .multi_model import (
    CHAT, COMPLETIONS, LEGACY, MEDIA_TYPES, Forwarded, MultiModelArgs, Routes, expect_answer, forwarded_answer,
    parse_multi_model_args, peek, router_deployment_options,
)
from .placement import deployment_options
from .replica import ModelReplica

logger = logging.getLogger("ray.serve")

router_app = FastAPI(title="serving_app router", docs_url=None, redoc_url=None)
router_app.add_middleware(_BarePrefixIsRoot)
for _error_type in ANSWERED_ERRORS:
    router_app.add_exception_handler(_error_type, _answered_error)


def _overloaded(error: BackPressureError, retry_after_s: int) -> APIError:
    return APIError(503, f"the model's replicas are overloaded: retry later ({error})", type_="server_error",
                    code="overloaded", headers={"Retry-After": str(retry_after_s)})


Answer = Union[DeploymentResponseGenerator, AsyncGenerator[Forwarded, None]]  # a model's, from its deployment or
# from the model the router hosts


async def _stop(answer: Answer) -> None:
    """Stop a model's answer: its replica's generation is aborted (and, hosted, its access line written)."""
    if isinstance(answer, DeploymentResponseGenerator):
        answer.cancel()
    else:
        await answer.aclose()


async def _pieces(first: Any, rest: Answer) -> AsyncIterator[bytes]:
    try:
        yield first
        async for piece in rest:
            yield piece
    finally:
        await _stop(rest)  # the client left (or the stream ended): stop the model's replica too


class _Model:
    """One model's engine and API in this process, answering routed requests (serving_app.multi_model)."""

    def __init__(self, replica: ModelReplica):
        self.replica = replica
        args = replica.args
        self.log = AccessLogger(application=serve.get_replica_context().app_name, model=args.served_model_name,
                                recorder=Recorder(ray_sink(), MetricLabels.of(args), [REQUESTS]),
                                include_text=args.access_log_text)

    @classmethod
    async def start(cls, raw_args: dict[str, Any]) -> "_Model":
        return cls(await ModelReplica.start(raw_args))

    def forward(self, endpoint: str, raw: bytes, deadline_unix: Optional[float],
                path: Optional[str] = None) -> AsyncGenerator[Forwarded, None]:
        return forwarded_answer(self.replica.api, self.replica.admission, endpoint, raw, deadline_unix, self.log,
                                path)

    async def check_health(self) -> None:
        await self.replica.engine.check_health()

    async def shutdown(self) -> None:
        await self.replica.engine.shutdown()


@serve.deployment(health_check_period_s=10, health_check_timeout_s=30, graceful_shutdown_timeout_s=30)
class ModelServer:
    """One model of the application: its engine and API, answering the router's calls."""

    async def __init__(self, raw_args: dict[str, Any]):
        self.model = await _Model.start(raw_args)

    async def check_health(self) -> None:
        await self.model.check_health()

    async def forward(self, endpoint: str, raw: bytes, deadline_unix: Optional[float],
                      path: Optional[str] = None) -> AsyncIterator[Forwarded]:
        async for item in self.model.forward(endpoint, raw, deadline_unix, path):
            yield item

    async def __del__(self):
        model = getattr(self, "model", None)  # absent when __init__ failed
        if model is not None:
            await model.shutdown()


@serve.deployment(name="Router", health_check_period_s=10, health_check_timeout_s=30, graceful_shutdown_timeout_s=30)
@serve.ingress(router_app)
class Router:
    async def __init__(self, raw_args: dict[str, Any], models: dict[str, DeploymentHandle]):
        self.args = MultiModelArgs.model_validate(raw_args)
        self.routes = Routes(self.args)
        # Index -> how to ask that model: the hosted one in this process, the others through their deployments.
        self.hosted = self.args.hosted
        self.handles = {index: models[name].options(stream=True, method_name="forward")
                        for index, name in enumerate(self.args.deployment_names()) if name is not None}
        self.model = None if self.hosted is None else await _Model.start(
            self.args.models[self.hosted].model_dump(mode="json"))
        keys = APIKeys.from_env()
        if not keys.required:
            logger.warning("%s is not set: anyone who reaches this endpoint can use it", API_KEYS_ENV)
        # Keys and the body limit here; each model's replicas admit (and shed) their own requests.
        admission = Admission(self.args.most_admitted(), 0, max(m.retry_after_s for m in self.args.models))
        router_app.add_middleware(Guard, keys=keys, admission=admission,
                                  max_body_bytes=max(m.max_request_bytes for m in self.args.models))
        # Outermost: what the router answers itself (the guard's 401/413, an unknown model, a full model's 503).
        # A request passed on to a model is logged and counted by that model's replica, with its engine's labels.
        router_app.add_middleware(AccessLog, application=serve.get_replica_context().app_name, model=None,
                                  recorder=Recorder(ray_sink(), MetricLabels("", "", ""), [REQUESTS]),
                                  include_text=any(m.access_log_text for m in self.args.models))

    async def check_health(self) -> None:
        if self.model is not None:
            await self.model.check_health()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What Serve scales a hosting router on (serving_app.hosted_autoscaling): its model's own requests."""
        admission = self.model.replica.admission if self.model is not None else None
        return {HOSTED_REQUESTS: 0 if admission is None else admission.running + admission.waiting}

    async def _forward(self, request: Request, endpoint: str) -> Response:
        arrival = time.time()
        raw = await request.body()
        model, stream = peek(raw)
        record = request.scope.get(RECORD)
        if record is not None:
            record.model = model
        index = self.routes.target(model, endpoint)
        deadline, path = self.routes.deadline(index, arrival), request.scope.get("path")
        answer: Answer = (self.model.forward(endpoint, raw, deadline, path)
                          if self.model is not None and index == self.hosted else
                          self.handles[index].remote(endpoint, raw, deadline, path))
        if record is not None:
            record.forwarded = True

        async def first() -> Any:
            try:
                item = expect_answer(await answer.__anext__())
            except BackPressureError as error:
                if record is not None:
                    record.forwarded = False  # Serve refused it before any replica saw it: the router logs it
                raise _overloaded(error, self.args.models[index].retry_after_s) from None
            except BaseException:
                await _stop(answer)
                raise
            if not stream and not isinstance(answer, DeploymentResponseGenerator):
                await answer.aclose()  # the hosted model's whole answer was its only item (and is logged)
            return item

        if not stream:
            return await _whole_answer(request, first())
        head = await first()
        headers = _SSE_HEADERS if endpoint != LEGACY else None
        return StreamingResponse(_pieces(head, answer), media_type=MEDIA_TYPES[endpoint], headers=headers)

    @router_app.get("/health")
    async def health(self) -> Response:
        return JSONResponse({"status": "ok", "models": self.routes.ids()})

    @router_app.get("/chat")
    async def chat_page(self) -> Response:
        return chat_page()

    @router_app.get("/v1/models")
    async def models(self) -> Response:
        return _json(self.routes.models())

    @router_app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._forward(request, COMPLETIONS)

    @router_app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._forward(request, CHAT)

    @router_app.post("/")
    async def legacy(self, request: Request) -> Response:
        """The legacy chatbot API, served by the default model."""
        return await self._forward(request, LEGACY)

    async def __del__(self):
        model = getattr(self, "model", None)  # absent when __init__ failed or no model is hosted
        if model is not None:
            await model.shutdown()


def multi_model_app_builder(raw_args: dict[str, Any]) -> Application:
    """Serve's application builder: one ModelServer deployment per model behind the router, but for the model the
    router hosts."""
    args = parse_multi_model_args(dict(raw_args or {}))
    models = {name: ModelServer.options(name=name, **deployment_options(model)).bind(model.model_dump(mode="json"))
              for name, model in zip(args.deployment_names(), args.models) if name is not None}
    return Router.options(**router_deployment_options(args)).bind(args.model_dump(mode="json"), models)
