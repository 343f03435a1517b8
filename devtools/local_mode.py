"""Local mode: serve a stack's applications on a Ray head on this machine, from the same serveConfigV2.

    python -m devtools local up --stack cpu [--model PATH_OR_HUB_ID|random] [--port N]
    python -m devtools local status --stack cpu     (with live figures per application, from its metrics)
    python -m devtools local down --stack cpu

`up` renders the stack's serveConfigV2 with the code the RayService uses, then adapts only what a laptop-sized
machine needs and says each change (devtools/local_plan.py). Without --model every application serves the default
real model (devtools/default_model.py: SmolLM2-135M-Instruct from PyPI, converted once); `--model random` serves a
generated random Llama instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any, Optional

from infra.config import StackConfigError, load_stack
from serving_app.serve_args import EngineName

from . import default_model, live_metrics, local_plan
from .live_metrics import EXPORT_INTERVAL_MS
from .local_plan import RANDOM, LocalModeError, ensure_envs, env_python, plan
from .local_ray import LocalRay
from .serve_rest import DeployError, ServeREST, http_json


def _state_path(stack: str) -> Path:
    return local_plan.CACHE / "local" / f"{stack}.json"


def _load_state(stack: str) -> dict[str, Any]:
    path = _state_path(stack)
    if not path.exists():
        raise LocalModeError(f"stack {stack!r} is not running locally (no {path}); start it with `local up`")
    return json.loads(path.read_text())


# Serve's HAProxy puts its admin socket at <temp dir>/haproxy/<56 hex>/admin.sock, and HAProxy refuses a socket path
# over 97 characters: the temp dir itself may take 21 at most.
MAX_RAY_TEMP_DIR = 21


def _ray_temp_dir(stack: str) -> Path:
    # Short, and distinct per stack and cache, so a test run never meets a user's head.
    digest = hashlib.sha1(f"{stack}\0{local_plan.CACHE.resolve()}".encode()).hexdigest()[:8]
    return Path(f"/tmp/ray-{digest}")


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
    ensure_envs({args.engine for app in load_stack(stack).serve.applications for _, args in app.model_args()}
                | {EngineName.VLLM})
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
