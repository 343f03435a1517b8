"""Several models behind one route, declared in a stack file (`multiModel` in place of `args`): validated, checked
at preview per model, rendered as serving_app:multi_model_app_builder's application, and adapted by local mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import devtools.local_plan as local
from infra.checks import run_checks
from infra.serve_config import MULTI_MODEL_IMPORT_PATH, serve_config
from serving_app.multi_model import parse_multi_model_args
from tests.infra_helpers import config_error, parse_document, problems_of, with_values

INTEL = {"target_device": "INTEL", "data_type": "int8", "num_cpus": 24, "max_ongoing_requests": 16,
         "resources": {"intel_cpu": 1}}


def two_intel_models(values: dict[str, Any], **second: Any) -> None:
    """The cpu stack's Intel application, serving a chat model and a code model behind its route."""
    app = values["serve"]["applications"][0]
    del app["args"]
    app["multiModel"] = {
        "default_model": "llama-2-7b-chat",
        "models": [{"model_name": "meta-llama/Llama-2-7b-chat-hf", "served_model_name": "llama-2-7b-chat", **INTEL},
                   {"model_name": "codellama/CodeLlama-7b-hf", "served_model_name": "codellama-7b",
                    **INTEL, **second}],
    }


def test_a_stack_may_serve_several_models_behind_one_route():
    stack = parse_document(with_values("cpu", two_intel_models))
    assert run_checks(stack) == []
    (entry, _) = serve_config(stack)["applications"]
    assert entry["import_path"] == MULTI_MODEL_IMPORT_PATH
    parsed = parse_multi_model_args(entry["args"])  # what the builder will read in the pod
    assert [m.served_model_name for m in parsed.models] == ["llama-2-7b-chat", "codellama-7b"]
    assert parsed.default_model == "llama-2-7b-chat" and all(m.engine.value == "bigdl" for m in parsed.models)


def test_the_rendered_config_is_valid_for_ray_serve():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(serve_config(parse_document(with_values("cpu", two_intel_models))))


@pytest.mark.parametrize("edit, message", [
    (lambda app: app.update(multiModel={"models": [{"model_name": "/models/a", "target_device": "INTEL"}]}),
     "give args (one model) or multiModel (several models behind this route), not both"),
    (lambda app: app.pop("args"), "give args (one model) or multiModel (several models behind this route), not neither"),
    (lambda app: app.update(args=None, multiModel={"models": [{"model_name": "/m/a", "served_model_name": "x",
                                                               "target_device": "INTEL", "num_cpu": 2}]}),
     "num_cpu"),
])
def test_an_application_is_one_kind_and_its_models_are_checked(edit, message):
    def change(values: dict[str, Any]) -> None:
        edit(values["serve"]["applications"][0])
        if values["serve"]["applications"][0].get("args") is None:
            values["serve"]["applications"][0].pop("args", None)

    assert message in config_error("cpu", change)


def test_a_hosting_router_given_replicas_of_its_own_fails_at_preview():
    def edit(values: dict[str, Any]) -> None:
        two_intel_models(values)
        values["serve"]["applications"][0]["multiModel"]["router"] = {"num_replicas": 2}

    message = config_error("cpu", edit)
    assert "multiModel.router.num_replicas: the router hosts the default model 'llama-2-7b-chat'" in message
    assert "set router.hosts_default_model: false" in message


def test_a_model_that_fits_no_node_is_named_by_its_place_in_the_file():
    problems = problems_of("cpu", lambda values: two_intel_models(values, num_cpus=500))
    assert "serve.applications[0] (llama2-cpu-intel).multiModel.models[1]: one replica needs" in problems
    assert "CPU: 500" in problems
    assert "models[0]: one replica needs" not in problems


def test_every_models_replicas_count_toward_the_cluster():
    # Each model alone fits a node; together at their maximum they need more nodes than the groups have.
    problems = problems_of("cpu", lambda values: two_intel_models(
        values, autoscaling_config={"min_replicas": 1, "max_replicas": 40}))
    assert "serve.applications: all replicas together need" in problems


def test_a_model_on_the_volume_needs_model_storage():
    def edit(values: dict[str, Any]) -> None:
        two_intel_models(values, model_name="/models/codellama")
        values.pop("modelStorage", None)

    problems = problems_of("cpu", edit)
    assert ("serve.applications[0].multiModel.models[1].model_name: /models/codellama is on the model volume"
            in problems)


def test_local_mode_adapts_each_model_and_keeps_the_router(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    real = tmp_path / "smollm2"
    monkeypatch.setattr(local, "CACHE", tmp_path)
    monkeypatch.setattr(local, "real_model", lambda: real)
    monkeypatch.setattr(local, "load_stack", lambda name: parse_document(with_values("cpu", two_intel_models)))
    plan = local.plan("cpu", gpus=0)
    app = plan.apps[0]
    assert [args.served_model_name for args in app.models] == ["llama-2-7b-chat", "codellama-7b"]
    assert all(args.num_cpus == 1 and args.model_name == str(real) for args in app.models)
    assert "codellama-7b: CPUs per replica 24 -> 1" in app.changes
    entry = plan.config["applications"][0]
    assert entry["import_path"] == MULTI_MODEL_IMPORT_PATH
    assert parse_multi_model_args(entry["args"]).default_model == "llama-2-7b-chat"
    assert entry["runtime_env"]["py_executable"] == str(local.env_python(app.args.engine))


def test_local_mode_refuses_one_application_of_two_engines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(local, "CACHE", tmp_path)
    monkeypatch.setattr(local, "real_model", lambda: tmp_path / "smollm2")
    monkeypatch.setattr(local, "onnx_model", lambda path, quantize: path)
    monkeypatch.setattr(local, "load_stack", lambda name: parse_document(with_values(
        "cpu", lambda values: two_intel_models(values, target_device="AMD", resources={"amd_cpu": 1}))))
    with pytest.raises(local.LocalModeError, match=r"llama2-cpu-intel: its models run on \['bigdl', 'onnxruntime'\]"):
        local.plan("cpu", gpus=0)
