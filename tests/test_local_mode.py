"""Local mode end to end: the `cpu` stack's own serveConfigV2 on a local Ray, each engine in its environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from devtools.local_plan import env_python
from devtools.local_ray import REPO_ROOT, LocalRay, free_port
from devtools.serve_rest import http_json
from infra.config import load_stack

pytestmark = pytest.mark.e2e


def _local(env: dict[str, str], *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "devtools", "local", *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    print(result.stdout[-4000:], result.stderr[-4000:])
    return result


def test_cpu_stack_serves_both_routes_locally_and_down_leaves_nothing(tmp_path: Path):
    engines = {app.args.engine for app in load_stack("cpu").serve.applications}
    missing = [str(env_python(engine)) for engine in engines if not env_python(engine).exists()]
    assert not missing, f"CPU engine environments missing: {missing}; run scripts/setup_envs.sh"
    env = {**os.environ, "INFRA_LOCAL_CACHE": str(tmp_path / "cache")}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    up = _local(env, "up", "--stack", "cpu", "--port", str(port))
    state_file = tmp_path / "cache" / "local" / "cpu.json"
    try:
        assert up.returncode == 0, up.stderr
        assert "SmolLM2-135M-Instruct" in up.stdout and "curl" in up.stdout and "/chat" in up.stdout
        stack = load_stack("cpu")
        assert len(stack.serve.applications) == 2
        for app in stack.serve.applications:
            base = f"http://127.0.0.1:{port}{app.route_prefix}"
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=300)
            model = app.args.served_model_name
            assert [m.id for m in client.models.list().data] == [model]
            completion = client.completions.create(model=model, prompt="Hello", max_tokens=8,
                                                   extra_body={"ignore_eos": True})
            assert completion.usage.completion_tokens == 8
            chunks = list(client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
            assert chunks[-1].usage.completion_tokens == 4
            # The default model is a real one: every engine answers a factual question as transformers does.
            answer = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=16, temperature=0).choices[0].message.content
            assert "Paris" in answer, (app.name, answer)
            status, body = http_json("POST", base, {"prompt": "legacy", "max_tokens": 3})
            assert status == 200 and len(body["text"]) == 1
        status_run = _local(env, "status", "--stack", "cpu")
        assert status_run.returncode == 0 and status_run.stdout.count("RUNNING") == 2
    finally:
        ray = LocalRay.from_state(json.loads(state_file.read_text())["ray"]) if state_file.exists() else None
        down = _local(env, "down", "--stack", "cpu")
    assert down.returncode == 0, down.stderr
    assert ray is not None and ray.processes() == [], "local down left Ray processes behind"
    assert not state_file.exists()
