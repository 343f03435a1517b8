"""LoRA adapters without Ray or a model: the `lora` serve arg, a replica's model catalog, what the API sends the
engine, and vLLM's engine arguments."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from serving_app.api import OpenAIAPI
from serving_app.errors import APIError
from serving_app.engines.registry import EngineName
from serving_app.engines.vllm_engine import engine_arguments
from serving_app.lora import ModelCatalog
from serving_app.serve_args import ServeArgs, parse_serve_args
from tests.fake_engine import FakeEngine

BASE = {"model_name": "/models/base", "served_model_name": "base", "target_device": "CPU"}


def adapter_dir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return path


def make_api(tmp_path: Path, **lora) -> tuple[OpenAIAPI, FakeEngine]:
    args = ServeArgs.model_validate({**BASE, "lora": {"adapters": {"sql": "/models/loras/sql"},
                                                      "dynamic_dir": str(tmp_path), **lora}})
    engine = FakeEngine(args)
    return OpenAIAPI(engine, args), engine


# ---- the serve arg -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    ({"target_device": "INTEL", "data_type": "int8", "lora": {"adapters": {"a": "/m/a"}}},
     "args.lora: the bigdl engine serves no LoRA adapters (only vllm does)"),
    ({"target_device": "AMD", "data_type": "int8", "lora": {"adapters": {"a": "/m/a"}}},
     "args.lora: the onnxruntime engine serves no LoRA adapters (only vllm does)"),
    ({"lora": {}}, "args.lora.adapters: give adapters, dynamic_dir or both"),
    ({"lora": {"adapters": {"../up": "/m/a"}}}, "args.lora.adapters: '../up': an adapter id is letters"),
    ({"lora": {"adapters": {"base": "/m/a"}}}, "args.lora.adapters.base: is the base model's own id"),
    ({"lora": {"dynamic_dir": "loras"}}, "args.lora.dynamic_dir: 'loras' is not an absolute path"),
    ({"lora": {"adapters": {"a": "/m/a"}, "max_loras": 4, "max_cpu_loras": 2}},
     "args.lora.max_cpu_loras: 2 is below max_loras 4"),
    ({"engine_kwargs": {"enable_lora": True}}, "args.engine_kwargs.enable_lora: set by the typed argument 'lora'"),
])
def test_refused_with_the_field_named(args, message):
    with pytest.raises(ValueError) as error:
        parse_serve_args({**BASE, **args})
    assert message in str(error.value)


def test_vllm_gets_the_lora_engine_arguments():
    args = parse_serve_args({**BASE, "lora": {"adapters": {"a": "/m/a"}, "max_loras": 2, "max_lora_rank": 8}})
    arguments = engine_arguments(args)
    assert (arguments["enable_lora"], arguments["max_loras"], arguments["max_lora_rank"],
            arguments["max_cpu_loras"]) == (True, 2, 8, 2)
    assert "enable_lora" not in engine_arguments(parse_serve_args(BASE))


# ---- the catalog ---------------------------------------------------------------------------------------------------


def test_declared_adapters_have_stable_ids_and_dynamic_ones_are_found_on_first_use(tmp_path):
    args = parse_serve_args({**BASE, "lora": {"adapters": {"b": "/m/b", "a": "org/hub-lora"},
                                              "dynamic_dir": str(tmp_path)}})
    catalog = ModelCatalog("base", args.lora, EngineName.VLLM)
    assert catalog.resolve("base") is None and catalog.resolve(None) is None
    assert (catalog.resolve("a").id, catalog.resolve("a").path, catalog.resolve("b").id) == (1, "org/hub-lora", 2)
    adapter_dir(tmp_path, "new")
    (tmp_path / "not-an-adapter").mkdir()
    assert catalog.ids() == ["base", "a", "b", "new"]
    found = catalog.resolve("new")
    assert (found.id, found.path) == (3, str(tmp_path / "new"))
    assert catalog.resolve("new") is found


def test_unknown_model_names_every_model_served(tmp_path):
    catalog = ModelCatalog("base", parse_serve_args({**BASE, "lora": {"adapters": {"a": "/m/a"}}}).lora,
                           EngineName.VLLM)
    with pytest.raises(LookupError) as error:
        catalog.resolve("other")
    assert str(error.value) == "model 'other' does not exist; this server serves 'base', 'a'"
    with pytest.raises(LookupError):
        catalog.resolve("../a")


def test_cpu_engine_says_it_serves_no_adapters():
    catalog = ModelCatalog("tiny", None, EngineName.BIGDL)
    with pytest.raises(LookupError) as error:
        catalog.resolve("my-lora")
    assert str(error.value) == ("model 'my-lora' does not exist; this server serves 'tiny' (the bigdl engine serves "
                                "no LoRA adapters)")


# ---- through the API ---------------------------------------------------------------------------------------------


def test_models_lists_the_adapters(tmp_path):
    adapter_dir(tmp_path, "chat")
    api, _ = make_api(tmp_path)
    assert [card.id for card in api.models().data] == ["base", "sql", "chat"]


def test_request_for_an_adapter_reaches_the_engine_with_it_and_answers_as_that_model(tmp_path):
    api, engine = make_api(tmp_path)
    body, request = api.completion_request(json.dumps({"model": "sql", "prompt": "hi", "max_tokens": 2}).encode())
    answer = asyncio.run(api.answer(body, request))
    assert engine.requests[0].lora.name == "sql" and answer.model == "sql"
    body, request = api.chat_request(json.dumps({"model": "base", "messages": [{"role": "user", "content": "x"}],
                                                 "max_tokens": 2}).encode())
    assert request.lora is None


def test_unknown_adapter_is_a_404_naming_the_models(tmp_path):
    api, _ = make_api(tmp_path)
    with pytest.raises(APIError) as error:
        api.completion_request(json.dumps({"model": "nope", "prompt": "hi"}).encode())
    assert (error.value.status, error.value.code, error.value.param) == (404, "model_not_found", "model")
    assert error.value.message == "model 'nope' does not exist; this server serves 'base', 'sql'"
