"""Several models behind one route, without Ray: the builder's arguments, the router's choice of model, and what a
model's replica answers a routed request (serving_app.multi_model, with the in-memory fake engine)."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
from contextlib import aclosing
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import pytest
from pydantic import BaseModel

from serving_app.access_log import RECORD, AccessLog, AccessLogger
from serving_app.api import OpenAIAPI
from serving_app.errors import APIError
from serving_app.hosted_autoscaling import HOSTED_REQUESTS, POLICY, scale_on_hosted_requests
from serving_app.limits import Admission
from serving_app.metrics import REQUESTS, MetricLabels, Recorder
from serving_app.multi_model import (
    CHAT, COMPLETIONS, LEGACY, MultiModelArgs, Refusal, Routes, expect_answer, forwarded_answer,
    parse_multi_model_args, peek, router_deployment_options,
)
from serving_app.sse import SSE_DONE
from serving_app.placement import deployment_options
from serving_app.serve_args import ServeArgs
from tests.fake_engine import FakeEngine
from tests.fake_metrics import FakeSink

LABELS = MetricLabels(model_name="b", engine="vllm", hardware="CPU")
ROUTER_LABELS = MetricLabels(model_name="", engine="", hardware="")


def model(served: str, **extra: Any) -> dict[str, Any]:
    return {"model_name": f"/models/{served}", "served_model_name": served, "target_device": "CPU", **extra}


def two_models(**extra: Any) -> MultiModelArgs:
    return parse_multi_model_args({"models": [model("org/a", lora={"adapters": {"a-sql": "/m/sql"}}), model("b")],
                                   **extra})


# ---- arguments -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, message", [
    ({"models": []}, "args.models: List should have at least 1 item"),
    ({"models": [model("a"), model("a")]},
     "args.models.1.served_model_name: 'a' is also served by models[0]; each model id must name one model"),
    ({"models": [model("a", lora={"adapters": {"b": "/m/b"}}), model("b")]},
     "args.models.1.served_model_name: 'b' is also served by models[0]"),
    ({"models": [model("a")], "default_model": "z"}, "args.default_model: 'z' is not a served_model_name of models ('a')"),
    ({"models": [model("a", num_cpus=0)]}, "args.models[0].num_cpus: Input should be greater than 0"),
    ({"models": [model("a")], "router": {"hosts_default_model": False, "num_replicas": 2,
                                         "autoscaling_config": {"max_replicas": 2}}},
     "args.router.num_replicas: give num_replicas (a fixed count) or autoscaling_config, not both"),
    ({"models": [model("a")], "router": {"num_replicas": 2}},
     "args.router.num_replicas: the router hosts the default model 'a', so its replicas and resources are that "
     "model's (models[0]); set router.hosts_default_model: false to give the router a deployment of its own"),
    ({"models": [model("a"), model("b")], "default_model": "b", "router": {"num_cpus": 2}},
     "args.router.num_cpus: the router hosts the default model 'b', so its replicas and resources are that "
     "model's (models[1])"),
    ({"models": [model("a", autoscaling_config={"min_replicas": 0, "max_replicas": 2})]},
     "args.router.hosts_default_model: the default model 'a' may scale to zero "
     "(models[0].autoscaling_config.min_replicas: 0), but the router it would run in must always run"),
])
def test_bad_arguments_name_the_field(raw, message):
    with pytest.raises(ValueError) as error:
        parse_multi_model_args(raw)
    assert message in str(error.value)


def test_first_model_is_the_default_and_names_are_serve_safe():
    args = two_models(router={"hosts_default_model": False})
    assert args.default_model == "org/a"
    assert args.hosted is None
    assert args.deployment_names() == ["Model-0-org--a", "Model-1-b"]


def test_the_router_hosts_the_default_model_by_default():
    args = two_models(default_model="b")
    assert args.hosted == 1
    assert args.deployment_names() == ["Model-0-org--a", None]  # no deployment of its own
    # What the builder passes the router validates again (every field given).
    assert MultiModelArgs.model_validate(args.model_dump(mode="json")) == args


def test_router_passes_on_what_every_replica_can_admit():
    args = parse_multi_model_args({"router": {"hosts_default_model": False}, "models": [
        model("a", max_ongoing_requests=8, autoscaling_config={"max_replicas": 3}), model("b", max_ongoing_requests=4)]})
    # (8 + 4 queued) x 3 replicas + (4 + 2) x 1
    assert args.most_admitted() == 42
    options = router_deployment_options(args)
    assert (options["max_ongoing_requests"], options["max_queued_requests"], options["num_replicas"]) == (84, 42, 1)
    assert options["ray_actor_options"] == {"num_cpus": 0}


def test_a_hosting_router_has_the_default_models_shape_and_scales_on_its_requests():
    default = model("a", max_ongoing_requests=8, num_cpus=3, resources={"cpu_avx512": 1},
                    autoscaling_config={"min_replicas": 1, "max_replicas": 3, "upscale_delay_s": 5})
    args = parse_multi_model_args({"models": [default, model("b", max_ongoing_requests=4)]})
    options = router_deployment_options(args)
    own = deployment_options(ServeArgs.model_validate(default))
    assert options["ray_actor_options"] == own["ray_actor_options"] == {"num_cpus": 3, "resources": {"cpu_avx512": 1}}
    assert (options["max_ongoing_requests"], options["max_queued_requests"]) == (84, 42)  # every model's, as above
    assert options["autoscaling_config"] == {**own["autoscaling_config"], "policy": {"policy_function": POLICY}}
    assert options["autoscaling_config"]["target_ongoing_requests"] == 4  # the model's own target
    assert "num_replicas" not in options


def test_a_hosting_router_of_a_fixed_count_keeps_that_count():
    args = parse_multi_model_args({"models": [model("a", num_replicas=2), model("b")]})
    options = router_deployment_options(args)
    assert options["num_replicas"] == 2 and "autoscaling_config" not in options


def policy_context(current: int, hosted: dict[str, float], target: float = 4, all_requests: float = 100) -> Any:
    config = SimpleNamespace(get_target_ongoing_requests=lambda: target)
    return SimpleNamespace(current_num_replicas=current, target_num_replicas=current, total_num_requests=all_requests,
                           aggregated_metrics={HOSTED_REQUESTS: hosted}, config=config)


def test_the_hosting_policy_counts_the_hosted_models_requests_alone():
    # 100 requests pass through the router's two replicas, 6 of them its own model's: 6 / 4 per replica.
    assert scale_on_hosted_requests(policy_context(2, {"r1": 4, "r2": 2})) == (1.5, {})
    assert scale_on_hosted_requests(policy_context(2, {"r1": 20, "r2": 12})) == (8.0, {})
    assert scale_on_hosted_requests(policy_context(1, {})) == (0.0, {})  # not reported yet: Serve's bounds apply


def test_the_hosting_policy_is_importable_by_its_path_and_imports_nothing_of_ours():
    module, name = POLICY.split(":")
    assert getattr(importlib.import_module(module), name) is scale_on_hosted_requests
    # Serve's controller unpickles the policy by value: no serving_app module may be referenced from it.
    source = Path(importlib.import_module(module).__file__).read_text()
    assert not re.search(r"^\s*(from|import)\s+(serving_app|\.)", source, re.MULTILINE)


# ---- choosing the model --------------------------------------------------------------------------------------------


def test_peek_reads_model_and_stream_and_tolerates_garbage():
    assert peek(b'{"model": "b", "stream": true}') == ("b", True)
    assert peek(b'{"model": 3}') == (None, False)
    assert peek(b"not json") == (None, False)
    assert peek(b"[1]") == (None, False)


def test_routes_by_model_adapter_and_default():
    routes = Routes(two_models(default_model="b"))
    assert routes.target("org/a", COMPLETIONS) == 0
    assert routes.target("a-sql", CHAT) == 0
    assert routes.target("b", COMPLETIONS) == 1
    assert routes.target(None, COMPLETIONS) == 1
    assert routes.target("org/a", LEGACY) == 1  # the legacy API names no model
    assert [card.id for card in routes.models().data] == ["org/a", "a-sql", "b"]


def test_unknown_model_is_a_404_naming_every_model():
    with pytest.raises(APIError) as error:
        Routes(two_models()).target("c", COMPLETIONS)
    assert (error.value.status, error.value.code, error.value.param) == (404, "model_not_found", "model")
    assert error.value.message == "model 'c' does not exist; this server serves 'org/a', 'a-sql', 'b'"


def test_deadline_counts_from_arrival_at_the_router():
    routes = Routes(parse_multi_model_args({"models": [model("a", request_timeout_s=5), model("b")]}))
    assert routes.deadline(0, 100.0) == 105.0 and routes.deadline(1, 100.0) is None


# ---- at the model's replica ----------------------------------------------------------------------------------------


def replica(**extra: Any) -> tuple[OpenAIAPI, Admission]:
    args = ServeArgs.model_validate(model("b", max_new_tokens=4, **extra))
    return OpenAIAPI(FakeEngine(args), args), Admission(args.max_ongoing_requests, args.queue_limit, 1)


def forwarded(api: OpenAIAPI, admission: Admission, endpoint: str, body: Any) -> list[Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def collect() -> list[Any]:
        return [item async for item in forwarded_answer(api, admission, endpoint, raw, None)]

    return asyncio.run(collect())


def test_whole_answer_is_one_response_model():
    (answer,) = forwarded(*replica(), COMPLETIONS, {"prompt": "hi"})
    assert isinstance(answer, BaseModel) and answer.choices[0].text == "Hello, world"
    (legacy,) = forwarded(*replica(), LEGACY, {"prompt": "hi"})
    assert legacy.text == ["Hello, world"]


def test_stream_is_the_single_model_routes_pieces():
    pieces = forwarded(*replica(), CHAT, {"messages": [{"role": "user", "content": "x"}], "stream": True})
    assert all(isinstance(p, bytes) for p in pieces) and pieces[-1] == b"data: [DONE]\n\n"
    lines = forwarded(*replica(), LEGACY, {"prompt": "hi", "stream": True})
    assert [json.loads(line)["text"] for line in lines] == ["Hel", "lo", ", wor", "ld"]


@pytest.mark.parametrize("body, status, code", [
    (b"{", 400, "invalid_json"),
    ({"prompt": "x" * 2048}, 413, "request_too_large"),
])
def test_refusals_come_before_any_piece(body, status, code):
    (refusal,) = forwarded(*replica(max_request_bytes=1024), COMPLETIONS, body)
    assert isinstance(refusal, Refusal) and (refusal.status, refusal.code) == (status, code)
    with pytest.raises(APIError) as error:
        expect_answer(refusal)
    assert error.value.status == status


def test_a_full_replica_sheds_with_retry_after():
    api, _ = replica()
    full = Admission(1, 0, 7)

    async def run() -> list[Any]:
        async with full.slot():
            return [item async for item in forwarded_answer(api, full, COMPLETIONS, b'{"prompt": "hi"}', None)]

    (refusal,) = asyncio.run(run())
    assert (refusal.status, refusal.code, refusal.headers) == (503, "overloaded", {"Retry-After": "7"})


# ---- the access log and serving_requests of a routed request ------------------------------------------------------


def logged(api: OpenAIAPI, admission: Admission, endpoint: str, body: dict[str, Any], read: Optional[int] = None,
           ) -> tuple[list[Any], FakeSink]:
    """Forward with the replica's AccessLogger; `read` items only, then stop reading (the router's client left)."""
    sink = FakeSink()
    log = AccessLogger(application="app", model="b", recorder=Recorder(sink, LABELS, [REQUESTS]))

    async def run() -> list[Any]:
        items = []
        answer = forwarded_answer(api, admission, endpoint, json.dumps(body).encode(), None, log, "/app/v1/x")
        async with aclosing(answer):
            async for item in answer:
                items.append(item)
                if read is not None and len(items) == read:
                    break
        return items

    return asyncio.run(run()), sink


def test_a_routed_whole_answer_is_logged_by_the_replica_with_its_tokens(access_lines):
    (answer,), sink = logged(*replica(), COMPLETIONS, {"prompt": "hi", "max_tokens": 3})
    (line,) = access_lines
    assert (line["status"], line["route"], line["model"], line["path"]) == (200, "openai", "b", "/app/v1/x")
    assert line["generated_tokens"] == answer.usage.completion_tokens == 3 and line["finish_reason"] == "length"
    assert line["prompt_tokens"] == answer.usage.prompt_tokens and line["ttft_s"] is not None
    assert sink.of("serving_requests", status="200", finished_reason="length", route="openai",
                   engine="vllm", hardware="CPU") == [1]


def test_a_routed_stream_is_logged_when_it_ends_or_when_the_router_stops_reading(access_lines):
    pieces, _ = logged(*replica(), LEGACY, {"prompt": "hi", "stream": True})
    assert access_lines[-1]["status"] == 200 and access_lines[-1]["route"] == "legacy" and access_lines[-1]["generated_tokens"] == 4
    api, admission = replica()
    _, sink = logged(api, admission, COMPLETIONS, {"prompt": "hi", "stream": True}, read=1)
    assert (access_lines[-1]["status"], access_lines[-1]["finish_reason"], access_lines[-1]["disconnected"]) == (499, "abort", True)
    assert sink.of("serving_requests", status="499", finished_reason="abort") == [1]
    assert len(access_lines) == 2 and api.engine.aborted  # logged once each; the generation was stopped


@pytest.mark.parametrize("endpoint", [COMPLETIONS, LEGACY])
def test_a_routed_stream_the_router_stops_reading_after_its_last_piece_is_logged_answered(access_lines, endpoint):
    """The router's client closes on [DONE]: the router may stop reading before the replica's stream ends itself."""
    body = {"prompt": "hi", "stream": True}
    pieces, _ = logged(*replica(), endpoint, body)
    api, admission = replica()
    again, sink = logged(api, admission, endpoint, body, read=len(pieces))
    assert len(again) == len(pieces) > 1 and (pieces[-1] == SSE_DONE) == (endpoint == COMPLETIONS)
    whole, stopped = access_lines
    assert (stopped["status"], stopped["finish_reason"]) == (whole["status"], whole["finish_reason"]) == (200, "length")
    assert sink.of("serving_requests", status="200", finished_reason="length") == [1] and not api.engine.aborted
    # Stopped one piece earlier, it is still the client leaving.
    logged(*replica(), endpoint, body, read=len(pieces) - 1)
    assert (access_lines[-1]["status"], access_lines[-1]["finish_reason"]) == (499, "abort")


def test_a_routed_refusal_is_logged_with_its_status(access_lines):
    (refusal,), sink = logged(*replica(), CHAT, {"messages": []})
    assert isinstance(refusal, Refusal) and access_lines[-1]["status"] == refusal.status == 400
    assert access_lines[-1]["finish_reason"] == "error" and sink.of("serving_requests", status="400") == [1]


def test_the_routers_middleware_skips_what_a_model_replica_logs(access_lines):
    async def forwarding_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope[RECORD].forwarded = True
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    async def refusing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope[RECORD].model = "no-such-model"
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    sinks = [FakeSink(), FakeSink()]
    for app, sink in zip((forwarding_app, refusing_app), sinks):
        middleware = AccessLog(app, application="app", model=None, recorder=Recorder(sink, ROUTER_LABELS, [REQUESTS]))
        asyncio.run(call_once(middleware))
    (line,) = access_lines
    assert (line["status"], line["model"]) == (404, "no-such-model")
    assert sinks[0].records == []
    # Counted without the client's model id as a label: a client must not mint series.
    (count,) = [tags for name, _, tags in sinks[1].records if name == "serving_requests"]
    assert count["model_name"] == "" and count["status"] == "404"


async def call_once(app: Any) -> None:
    scope = {"type": "http", "method": "POST", "path": "/app/v1/completions", "root_path": "/app", "headers": []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    await app(scope, receive, send)
