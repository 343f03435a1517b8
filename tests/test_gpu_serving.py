"""benchmarks/gpu_serving.py builds what runs on the GPU machine from the stack's own config; a mistake there costs a
device session, so what it builds is checked here, without Ray, a GPU or vLLM's engine."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu_serving
from infra.config import load_stack
from infra.serve_config import serve_config


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-models")
    return {shape: gpu_serving.model_dir(shape, root) for shape in ("7b", "70b")}


def test_the_app_is_the_stacks_entry_repointed_at_the_shape(shapes):
    stack_entry = serve_config(load_stack("gpu"))["applications"][0]
    app = gpu_serving.app_config("70b", shapes["70b"], replicas=1, backend=None,
                                 settings={"gpu_count": 1, "num_cpus": 8, "data_type": "fp8"})
    assert {k: v for k, v in app.items() if k != "args"} == {k: v for k, v in stack_entry.items() if k != "args"}
    args = app["args"]
    assert args["model_name"] == str(shapes["70b"])
    assert args["served_model_name"] == stack_entry["args"]["served_model_name"]
    assert (args["data_type"], args["gpu_count"], args["num_replicas"]) == ("fp8", 1, 1)
    assert args["engine_kwargs"]["load_format"] == "dummy"
    # A fixed count replaces the stack's autoscaling range (Serve refuses both).
    assert "autoscaling_config" in stack_entry["args"] and "autoscaling_config" not in args


def test_without_a_replica_count_the_stacks_autoscaling_stays(shapes):
    app = gpu_serving.app_config("70b", shapes["70b"], replicas=None, backend=None)
    assert "autoscaling_config" in app["args"] and "num_replicas" not in app["args"]


def test_a_bad_override_is_refused_with_its_name(shapes):
    with pytest.raises(ValueError, match="gpu_count"):
        gpu_serving.app_config("7b", shapes["7b"], replicas=1, backend=None, settings={"gpu_count": -1})


@pytest.mark.parametrize(("data_type", "expected"), [
    ("fp8", ["--tensor-parallel-size", "1", "--dtype", "auto", "--quantization", "fp8"]),
    ("bfloat16", ["--tensor-parallel-size", "1", "--dtype", "bfloat16"]),
])
def test_bare_gets_the_engine_flags_our_args_resolve_to(shapes, data_type, expected):
    app = gpu_serving.app_config("7b", shapes["7b"], replicas=1, backend=None,
                                 settings={"gpu_count": 1, "data_type": data_type})
    command = gpu_serving.bare_server(app, shapes["7b"]).command
    flags = command[command.index("--disable-log-stats") + 1:]
    pairs = dict(zip(flags[::2], flags[1::2]))
    assert dict(zip(expected[::2], expected[1::2])).items() <= pairs.items()
    assert pairs["--load-format"] == "dummy"
    if data_type != "fp8":
        assert "--quantization" not in pairs


def test_the_shape_directory_has_the_32000_word_tokenizer(shapes):
    vocab = json.loads((shapes["7b"] / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) == gpu_serving.VOCAB
    assert json.loads((shapes["70b"] / "config.json").read_text())["num_hidden_layers"] == 80


def test_behind_the_router_the_model_keeps_its_args_and_bare_its_flags(shapes):
    app = gpu_serving.app_config("7b", shapes["7b"], replicas=1, backend=None,
                                 settings={"gpu_count": 1, "num_cpus": 8, "data_type": "bfloat16"})
    routed = gpu_serving.behind_router(app)
    assert routed["import_path"] == "serving_app:multi_model_app_builder"
    assert (routed["name"], routed["route_prefix"]) == (app["name"], app["route_prefix"])
    assert gpu_serving.frontend_args(routed) == app["args"]
    assert gpu_serving.model_deployment(routed) == "Router"  # hosted: the router's replicas run the engine
    assert gpu_serving.model_deployment(gpu_serving.behind_router(app, 1)).startswith("Model-0-")
    assert gpu_serving.model_deployment(app) == "LLMServer"
    # What Serve would build from it validates as the router's args.
    from serving_app.multi_model import parse_multi_model_args
    assert parse_multi_model_args(routed["args"]).models[0].served_model_name == app["args"]["served_model_name"]
    def flags(server):  # the engine's flags (each server gets its own free port)
        return server.command[server.command.index("--disable-log-stats"):]
    assert flags(gpu_serving.bare_server(routed, shapes["7b"])) == flags(gpu_serving.bare_server(app, shapes["7b"]))
    # A router of its own replicas: the same model behind it.
    two = parse_multi_model_args(gpu_serving.behind_router(app, "2")["args"])
    assert (two.router.replica_range, two.models[0].served_model_name) == ((2, 2), app["args"]["served_model_name"])
    assert two.hosted is None
    assert "router" not in routed["args"] and parse_multi_model_args(routed["args"]).hosted == 0
