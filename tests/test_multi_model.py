"""Several models behind one route, without Ray: the builder's arguments, the router's choice of model, and what a
model's replica answers a routed request (serving_app.multi_model, with the in-memory fake engine)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import BaseModel

from serving_app.api import APIError, OpenAIAPI
from serving_app.limits import Admission
from serving_app.multi_model import (
    CHAT, COMPLETIONS, LEGACY, MultiModelArgs, Refusal, Routes, expect_answer, forwarded_answer,
    parse_multi_model_args, peek, router_deployment_options,
)
from serving_app.serve_args import ServeArgs
from tests.fake_engine import FakeEngine


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
    ({"models": [model("a")], "router": {"num_replicas": 2, "autoscaling_config": {"max_replicas": 2}}},
     "args.router.num_replicas: give num_replicas (a fixed count) or autoscaling_config, not both"),
])
def test_bad_arguments_name_the_field(raw, message):
    with pytest.raises(ValueError) as error:
        parse_multi_model_args(raw)
    assert message in str(error.value)


def test_first_model_is_the_default_and_names_are_serve_safe():
    args = two_models()
    assert args.default_model == "org/a"
    assert args.deployment_names() == ["Model-0-org--a", "Model-1-b"]


def test_router_passes_on_what_every_replica_can_admit():
    args = parse_multi_model_args({"models": [
        model("a", max_ongoing_requests=8, autoscaling_config={"max_replicas": 3}), model("b", max_ongoing_requests=4)]})
    # (8 + 4 queued) x 3 replicas + (4 + 2) x 1
    assert args.most_admitted() == 42
    options = router_deployment_options(args)
    assert (options["max_ongoing_requests"], options["max_queued_requests"], options["num_replicas"]) == (84, 42, 1)
    assert options["ray_actor_options"] == {"num_cpus": 0}


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
