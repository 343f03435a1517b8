"""Several models behind one base URL, free of Ray: the builder's arguments (`MultiModelArgs`), how the router picks
a model for a request, and what passes between the router and a model's replica.

Each model has its own engine, resources and autoscaling: its own deployment (serving_app.router.ModelServer), or,
for the default model by default (`router.hosts_default_model`), the router's replicas themselves. The router
(serving_app.router) is the application's HTTP ingress. It reads a request's `model`, passes the raw body to that
model (in its own process, or through a streamed DeploymentHandle: the same `forwarded_answer` either way), and
answers `GET /v1/models` with every model and LoRA adapter.
The legacy chatbot API (`POST /`), which names no model, goes to `default_model`. API keys and the body-size limit
apply at the router; admission (the bounded queue) and the request's deadline at the model's replica, as on a
single-model route.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .access_log import CLIENT_CLOSED, LEGACY_ROUTE, OPENAI_ROUTE, AccessLogger, RequestRecord
from .api import OpenAIAPI
from .errors import ANSWERED_ERRORS, APIError, as_api_error
from .autoscaling import AutoscalingConfig, replica_range
from .hosted_autoscaling import POLICY
from .limits import Admission
from .lora import ModelCatalog
from .placement import deployment_options
from .protocol import ModelCard, ModelList
from .serve_args import ServeArgs, describe_validation_error
from .sse import SSE_DONE

COMPLETIONS, CHAT, LEGACY = "completions", "chat", "legacy"
MEDIA_TYPES = {COMPLETIONS: "text/event-stream", CHAT: "text/event-stream", LEGACY: "application/x-ndjson"}
ROUTES = {COMPLETIONS: OPENAI_ROUTE, CHAT: OPENAI_ROUTE, LEGACY: LEGACY_ROUTE}  # the access log's route label


class RouterOptions(BaseModel):
    """Where the router runs: in the default model's replicas (the default), or as a deployment of its own, which
    holds no model and by default reserves no CPU."""

    model_config = ConfigDict(extra="forbid")

    hosts_default_model: bool = Field(
        default=True, description="The router runs in the default model's replicas: that model's requests take no "
                                  "hop to another process (the other models' take one), and the router has that "
                                  "model's replicas, resources and autoscaling. False: the router is a deployment "
                                  "of its own (num_replicas, autoscaling_config, num_cpus), and every model's "
                                  "requests take the hop; needed where the default model scales to zero.")
    num_replicas: Optional[int] = Field(default=None, ge=1, le=1024, description="Default 1.")
    autoscaling_config: Optional[AutoscalingConfig] = None
    num_cpus: float = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_count(self) -> "RouterOptions":
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("num_replicas: give num_replicas (a fixed count) or autoscaling_config, not both")
        return self

    @property
    def replica_range(self) -> tuple[int, int]:
        """(fewest, most) router replicas."""
        return replica_range(self.autoscaling_config, self.num_replicas or 1)


class MultiModelArgs(BaseModel):
    """Validated `args` of `serving_app:multi_model_app_builder`."""

    model_config = ConfigDict(extra="forbid")

    models: list[ServeArgs] = Field(min_length=1, description="One entry per model: its own serve arguments.")
    default_model: Optional[str] = Field(
        default=None, description="The served_model_name the legacy route (POST /) serves; default: the first model.")
    router: RouterOptions = Field(default_factory=RouterOptions)

    @model_validator(mode="after")
    def _distinct(self) -> "MultiModelArgs":
        owner: dict[str, int] = {}
        for index, args in enumerate(self.models):
            for model_id in [args.served_model_name, *(args.lora.adapters if args.lora else {})]:
                if model_id in owner:
                    raise ValueError(f"models.{index}.served_model_name: {model_id!r} is also served by "
                                     f"models[{owner[model_id]}]; each model id must name one model")
                owner[model_id] = index
        names = [args.served_model_name for args in self.models]
        if self.default_model is None:
            self.default_model = names[0]
        elif self.default_model not in names:
            raise ValueError(f"default_model: {self.default_model!r} is not a served_model_name of models "
                             f"({', '.join(map(repr, names))})")
        if self.router.hosts_default_model:
            self._check_hosting(names.index(self.default_model))
        return self

    def _check_hosting(self, index: int) -> None:
        router = self.router
        own = [name for name, value in (("num_replicas", router.num_replicas), ("num_cpus", router.num_cpus or None),
                                        ("autoscaling_config", router.autoscaling_config)) if value is not None]
        if own:
            raise ValueError(f"router.{own[0]}: the router hosts the default model {self.default_model!r}, so its "
                             f"replicas and resources are that model's (models[{index}]); set "
                             "router.hosts_default_model: false to give the router a deployment of its own")
        if self.models[index].replica_range[0] == 0:
            raise ValueError(f"router.hosts_default_model: the default model {self.default_model!r} may scale to "
                             f"zero (models[{index}].autoscaling_config.min_replicas: 0), but the router it would "
                             "run in must always run: set router.hosts_default_model: false, or min_replicas >= 1")

    @property
    def hosted(self) -> Optional[int]:
        """Index of the model that runs in the router's own replicas (None: every model has its own deployment)."""
        if not self.router.hosts_default_model:
            return None
        return [args.served_model_name for args in self.models].index(self.default_model)

    def deployment_names(self) -> list[Optional[str]]:
        """The Serve deployment name of each model (Serve's names take no '/', which hub ids have); None for the
        model the router hosts."""
        return [None if index == self.hosted else
                f"Model-{index}-{re.sub(r'[^A-Za-z0-9_.-]+', '--', args.served_model_name)}"
                for index, args in enumerate(self.models)]

    def most_admitted(self) -> int:
        """Requests all the models' replicas together admit at their maximum (running plus queued)."""
        return sum((args.max_ongoing_requests + args.queue_limit) * args.replica_range[1] for args in self.models)


def parse_multi_model_args(raw: dict[str, Any], where: str = "args") -> MultiModelArgs:
    """Validate raw args, raising ValueError whose message names every wrong field under `where`."""
    try:
        return MultiModelArgs.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"invalid serve arguments:\n{describe_validation_error(error, where)}") from None


# ---- the router's side ---------------------------------------------------------------------------------------------


def peek(raw: bytes) -> tuple[Optional[str], bool]:
    """(`model`, `stream`) of a request body; a body that is not a JSON object names no model and streams nothing
    (the model's replica then refuses it with the usual 400)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None, False
    if not isinstance(body, dict):
        return None, False
    model = body.get("model")
    return (model if isinstance(model, str) else None), body.get("stream") is True


class Routes:
    """Which model (by index) serves a model id, from each model's own catalog (its id and LoRA adapters)."""

    def __init__(self, args: MultiModelArgs):
        self.args = args
        self.catalogs = [ModelCatalog(m.served_model_name, m.lora, m.engine) for m in args.models]
        self.default = [m.served_model_name for m in args.models].index(args.default_model)

    def target(self, model: Optional[str], endpoint: str) -> int:
        if endpoint == LEGACY or model is None:
            return self.default
        for index, catalog in enumerate(self.catalogs):
            try:
                catalog.resolve(model)
                return index
            except LookupError:
                continue
        raise APIError(404, f"model {model!r} does not exist; this server serves "
                            f"{', '.join(map(repr, self.ids()))}", code="model_not_found", param="model")

    def ids(self) -> list[str]:
        return [model_id for catalog in self.catalogs for model_id in catalog.ids()]

    def models(self) -> ModelList:
        """Every model and adapter, without asking the replicas (a model scaled to zero stays at zero)."""
        return ModelList(data=[ModelCard(id=model_id, max_model_len=args.max_model_len)
                               for args, catalog in zip(self.args.models, self.catalogs)
                               for model_id in catalog.ids()])

    def deadline(self, index: int, arrival: float) -> Optional[float]:
        """The request's deadline as wall-clock time (it crosses processes), from its arrival at the router."""
        timeout = self.args.models[index].request_timeout_s
        return None if timeout is None else arrival + timeout


# ---- between the router and a model's replica ----------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """An error answered before any of the answer was sent: a plain value, so it crosses processes intact."""

    status: int
    message: str
    type: str
    code: Optional[str] = None
    param: Optional[str] = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, error: Exception) -> "Refusal":
        error = as_api_error(error)
        return cls(error.status, error.message, error.type, error.code, error.param, dict(error.headers))

    def error(self) -> APIError:
        return APIError(self.status, self.message, self.type, self.code, self.param, dict(self.headers))


Forwarded = Union[Refusal, BaseModel, bytes]  # a refusal; a whole answer; or the pieces of a stream


async def forwarded_answer(api: OpenAIAPI, admission: Admission, endpoint: str, raw: bytes,
                           deadline_unix: Optional[float], log: Optional[AccessLogger] = None,
                           path: Optional[str] = None) -> AsyncIterator[Forwarded]:
    """One routed request's answer at the model's replica: a Refusal, or the whole answer (a response model), or
    the stream's pieces as the single-model route would send them. With `log`, the request's access line and count
    are written here, where its tokens are known: when a refusal or whole answer is passed on, when a stream ends,
    or (499) when the router stops reading because its client left."""
    record = log.record(ROUTES[endpoint]) if log is not None else None
    if record is not None and record.include_text:
        record.body += raw
    finished = False
    # Whether the client has the whole answer once the last item yielded is delivered: an OpenAI stream's [DONE],
    # or a legacy stream's piece once the generation finished or failed (it has no closing line). The router may
    # stop reading right after it (its client closes on [DONE]), before this generator gets to finish on its own.
    answered = False

    def finish(status: int) -> None:
        nonlocal finished
        finished = True
        if log is not None and record is not None:
            log.finish(record, status, "POST", path)

    try:
        async for item in _answer(api, admission, endpoint, raw, deadline_unix, record):
            if isinstance(item, (Refusal, BaseModel)):  # the answer's only item
                finish(item.status if isinstance(item, Refusal) else 200)
                yield item
                return
            answered = item == SSE_DONE if endpoint != LEGACY else (
                record is not None and (record.finish_reason is not None or record.failed))
            yield item
        finish(200)
    finally:
        if not finished:
            finish(200 if answered else CLIENT_CLOSED)


async def _answer(api: OpenAIAPI, admission: Admission, endpoint: str, raw: bytes, deadline_unix: Optional[float],
                  record: Optional[RequestRecord]) -> AsyncIterator[Forwarded]:
    deadline = None if deadline_unix is None else time.monotonic() + (deadline_unix - time.time())
    try:
        if len(raw) > api.args.max_request_bytes:
            raise APIError(413, f"request body is larger than {api.args.max_request_bytes} bytes",
                           code="request_too_large")
        async with admission.slot(deadline):
            if endpoint == LEGACY:
                body, generations = await api.prepare(api.legacy_requests, raw)
                if body.stream:
                    pieces = api.legacy_stream(generations[0], deadline, record)
                else:
                    yield await api.legacy(generations, deadline, record)
                    return
            else:
                parse = api.completion_request if endpoint == COMPLETIONS else api.chat_request
                body, generation = await api.prepare(parse, raw)
                if body.stream:
                    pieces = api.stream(body, generation, deadline, record)
                else:
                    yield await api.answer(body, generation, deadline, record)
                    return
            async with aclosing(pieces) as stream:  # the router closing its end aborts the generation
                async for piece in stream:
                    yield piece
    except ANSWERED_ERRORS as error:  # the stream answers its own errors, so this comes before any piece
        yield Refusal.of(error)


def expect_answer(item: Any) -> Any:
    """The first item of a forwarded answer, or the refusal it is raised as."""
    if isinstance(item, Refusal):
        raise item.error()
    return item


def router_deployment_options(args: MultiModelArgs) -> dict[str, Any]:
    """Serve's options of the router: it passes on what every model's replicas can admit together, twice over like
    a model's own (serving_app.placement.serve_admission_options), so shedding stays the replicas' to answer. A
    router that hosts the default model has that model's shape, count and autoscaling, the last on the hosted
    model's own requests (serving_app.hosted_autoscaling)."""
    admission = {"max_ongoing_requests": 2 * args.most_admitted(), "max_queued_requests": args.most_admitted()}
    if args.hosted is not None:
        options = {**deployment_options(args.models[args.hosted]), **admission}
        if "autoscaling_config" in options:
            options["autoscaling_config"] = {**options["autoscaling_config"], "policy": {"policy_function": POLICY}}
        return options
    options = {"ray_actor_options": {"num_cpus": args.router.num_cpus}, **admission}
    if args.router.autoscaling_config is not None:
        options["autoscaling_config"] = args.router.autoscaling_config.serve_options(args.most_admitted())
    else:
        options["num_replicas"] = args.router.replica_range[0]
    return options
