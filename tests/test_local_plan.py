"""Local mode's plan: the stack's own serveConfigV2, adapted to this machine, with every change said."""

from __future__ import annotations

from pathlib import Path

import pytest

import devtools.local_mode as local_mode
import devtools.local_plan as local
from infra.config import load_stack
from infra.serve_config import serve_config
from serving_app.serve_args import EngineName, TargetDevice


@pytest.fixture(autouse=True)
def no_model_generation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(local, "CACHE", tmp_path)
    def fake_tiny_model(engine: EngineName) -> Path:
        path = tmp_path / f"tiny-{engine.value}"
        path.mkdir(exist_ok=True)
        return path

    monkeypatch.setattr(local, "tiny_model", fake_tiny_model)
    real = tmp_path / "smollm2"
    real.mkdir(exist_ok=True)
    monkeypatch.setattr(local, "real_model", lambda: real)
    monkeypatch.setattr(local, "onnx_model", lambda path, quantize: path.with_name(path.name + "-onnx"))


def test_gpu_stack_without_gpus_runs_vllm_on_cpu_and_says_so():
    plan = local.plan("gpu", gpus=0)
    (app,) = plan.apps
    assert app.args.engine is EngineName.VLLM and app.args.target_device is TargetDevice.CPU
    assert app.args.tensor_parallel_size == 1 and app.args.num_replicas == 1
    assert any("tensor parallelism 1" in change for change in app.changes)
    assert any("SmolLM2-135M-Instruct" in note for note in plan.notes)
    assert app.args.model_name.endswith("smollm2")
    # Everything not adapted is the RayService's own config.
    original = serve_config(load_stack("gpu"))["applications"][0]
    entry = plan.config["applications"][0]
    assert (entry["name"], entry["route_prefix"], entry["import_path"]) == (
        original["name"], original["route_prefix"], original["import_path"])
    assert entry["args"]["served_model_name"] == original["args"]["served_model_name"]
    assert entry["runtime_env"]["py_executable"].endswith(".venv/bin/python")


def test_gpu_stack_with_enough_gpus_keeps_tensor_parallelism():
    (app,) = local.plan("gpu", gpus=8).apps
    assert app.args.target_device is TargetDevice.NVIDIA and app.args.gpu_count == 4


def test_cpu_stack_runs_each_engine_in_its_environment_with_its_custom_resources(tmp_path: Path):
    plan = local.plan("cpu", gpus=0)
    by_engine = {app.args.engine: app for app in plan.apps}
    assert set(by_engine) == {EngineName.BIGDL, EngineName.ONNXRUNTIME}
    executables = {e["name"]: e["runtime_env"]["py_executable"] for e in plan.config["applications"]}
    assert executables[by_engine[EngineName.BIGDL].name].endswith(".venv-bigdl/bin/python")
    assert executables[by_engine[EngineName.ONNXRUNTIME].name].endswith(".venv-onnx/bin/python")
    assert by_engine[EngineName.ONNXRUNTIME].args.model_name.endswith("-onnx")
    # The volume path is remapped; replicas still ask for the stack's custom resources, which the head provides.
    assert by_engine[EngineName.ONNXRUNTIME].args.engine_kwargs["onnx_cache_dir"].startswith(str(tmp_path))
    assert plan.resources == {"intel_cpu": 1.0, "amd_cpu": 1.0}
    assert plan.config["http_options"]["host"] == "127.0.0.1"


def test_a_given_model_replaces_the_generated_one(tmp_path: Path):
    model = tmp_path / "my-llama"
    model.mkdir()
    plan = local.plan("gpu", model=str(model), gpus=0)
    assert plan.apps[0].args.model_name == str(model)
    assert not any("random text" in note or "SmolLM2" in note for note in plan.notes)


def test_model_random_serves_the_generated_llama(tmp_path: Path):
    plan = local.plan("cpu", model="random", gpus=0)
    by_engine = {app.args.engine: app for app in plan.apps}
    assert by_engine[EngineName.BIGDL].args.model_name == str(tmp_path / "tiny-bigdl")
    assert by_engine[EngineName.BIGDL].args.max_model_len == local.TINY_MODEL_LEN
    assert any("random text" in note for note in plan.notes)


def test_python_m_infra_local_is_an_alias_of_devtools_local(monkeypatch: pytest.MonkeyPatch):
    from infra.__main__ import main as infra_main

    seen = []
    monkeypatch.setattr(local_mode, "main", lambda argv: seen.append(argv) or 0)
    assert infra_main(["local", "status", "--stack", "cpu"]) == 0
    assert seen == [["status", "--stack", "cpu"]]


@pytest.mark.parametrize("stack", ["cpu", "a-much-longer-stack-name-than-the-shipped-ones"])
def test_the_local_heads_temp_dir_leaves_room_for_haproxys_socket(stack, monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path):
    monkeypatch.setattr(local, "CACHE", tmp_path / ("deep" * 20))
    path = local_mode._ray_temp_dir(stack)
    assert len(str(path)) <= local_mode.MAX_RAY_TEMP_DIR
    assert path != local_mode._ray_temp_dir("other")
