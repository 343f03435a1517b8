"""Shared pieces of the benchmarks: the generated model, the load generator, per-process CPU accounting and the
machine description (the servers they compare are devtools/servers.py). Runs in the main environment (.venv): the
load generator is vLLM's `vllm bench serve`; our Serve app may run in any engine environment (its python is an
argument).

Nothing here is a test: the numbers go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from devtools.servers import Server
from serving_app.engines.registry import EngineName, spec

REPO_ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/serving-bench"))
MODELS = WORK / "models"
LOGS = WORK / "logs"
RESULTS = REPO_ROOT / "benchmarks" / "results"
MAIN_PYTHON = REPO_ROOT / spec(EngineName.VLLM).environment.venv / "bin" / "python"  # vLLM's: the load generator

CLK_TCK = os.sysconf("SC_CLK_TCK")


def ensure_model(size: str, python: Optional[Path] = None) -> Path:
    """The generated Llama (seed 0). Written by the oldest `tokenizers` (BigDL's 0.13) so every env reads it."""
    out = MODELS / f"llama-{size}"
    python = python or REPO_ROOT / spec(EngineName.BIGDL).environment.venv / "bin" / "python"
    if not (out / "config.json").exists():
        if not Path(python).exists():
            python = Path(sys.executable)
        subprocess.run([str(python), "-m", "devtools.tiny_llama", str(out), "--size", size], cwd=REPO_ROOT,
                       check=True)
    return out


def parameter_count(model_dir: Path) -> dict[str, int]:
    """Parameters in the checkpoint, split into embeddings/lm_head and the rest (read from safetensors headers)."""
    counts = {"total": 0, "embedding": 0, "lm_head": 0, "linear": 0, "norm": 0}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for dim in info["shape"]:
                n *= dim
            counts["total"] += n
            if "embed_tokens" in name:
                counts["embedding"] += n
            elif "lm_head" in name:
                counts["lm_head"] += n
            elif "norm" in name:
                counts["norm"] += n
            else:
                counts["linear"] += n
    return counts


# ---- machine ---------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    flags = fields.get("Flags", "").split()
    return {
        "cpu_model": fields.get("Model name"),
        "cpus": os.cpu_count(),
        "cores_per_socket": fields.get("Core(s) per socket"),
        "threads_per_core": fields.get("Thread(s) per core"),
        "hypervisor": fields.get("Hypervisor vendor"),
        "l2": fields.get("L2 cache"),
        "l3": fields.get("L3 cache"),
        "isa": [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f in flags],
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def package_versions(python: Path, packages: list[str]) -> dict[str, Optional[str]]:
    code = ("import json, importlib.metadata as m\nout={}\nfor p in %r:\n    try: out[p]=m.version(p)\n"
            "    except Exception: out[p]=None\nprint(json.dumps(out))") % (packages,)
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine spent not idle (all processes, ours and everyone else's)."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts[:8]) - idle) / CLK_TCK


# ---- per-process CPU accounting ----------------------------------------------------------------------------


def _role(pid: int) -> str:
    try:
        cmd = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")).strip()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gone"
    for key, role in (
        ("ProxyActor", "ray proxy"), (":Router", "serve router (several models' ingress)"),
        ("ServeReplica", "serve replica (API + vLLM frontend)"),
        ("ServeController", "ray serve controller"), ("VLLM::EngineCore", "vllm engine core"),
        ("VLLM::Worker", "vllm worker (model)"), ("openai.api_server", "vllm api server (API + frontend)"),
        ("gcs_server", "ray gcs/raylet/dashboard"), ("raylet", "ray gcs/raylet/dashboard"),
        ("dashboard", "ray gcs/raylet/dashboard"), ("ray::", "ray other"),
    ):
        if key in cmd or key in comm:
            return role
    return "other (" + comm + ")"


def cpu_seconds(pids: list[int]) -> dict[int, tuple[str, float]]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (_role(pid), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def cpu_by_role(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    roles: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        delta = seconds - before.get(pid, (role, 0.0))[1]
        roles[role] = roles.get(role, 0.0) + delta
    return {role: round(value, 3) for role, value in sorted(roles.items()) if value > 0.005}


# ---- the load generator ------------------------------------------------------------------------------------


def run_load(server: Server, served_name: str, tokenizer: Path, input_len: int, output_len: int,
             concurrency: int, num_prompts: int, seed: int = 0, warmups: Optional[int] = None,
             extra: Optional[list[str]] = None, dataset: Optional[list[str]] = None) -> dict[str, Any]:
    """One `vllm bench serve` run (random prompts of fixed length unless `dataset` names other prompts, fixed output
    length, ignore_eos, streaming /v1/completions) plus what it lacks: CPU seconds per process role, machine load,
    a token-count check."""
    from vllm.benchmarks.serve import add_cli_args, main

    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser as Parser
    except ImportError:  # older layouts
        Parser = argparse.ArgumentParser
    parser = Parser()
    add_cli_args(parser)
    argv = [
        "--backend", "openai", "--endpoint", "/v1/completions", "--base-url", server.base_url,
        "--model", served_name, "--tokenizer", str(tokenizer),
        *(dataset or ["--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len",
                      str(output_len), "--random-range-ratio", "0"]),
        "--ignore-eos", "--temperature", "0",
        "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
        "--num-warmups", str(concurrency if warmups is None else warmups),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,95,99",
        "--seed", str(seed), "--disable-tqdm", "--save-detailed", *(extra or []),
    ]
    args = parser.parse_args(argv)
    pids = server.pids()
    load_before = loadavg()
    cpu_before = cpu_seconds(pids)
    busy_before = machine_busy_seconds()
    wall_before = time.perf_counter()
    LOGS.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(open(LOGS / "vllm-bench-stdout.log", "a")):
        result = main(args)
    wall = time.perf_counter() - wall_before
    busy = machine_busy_seconds() - busy_before
    cpu = cpu_by_role(cpu_before, cpu_seconds(pids))
    keep = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    # Each request's TTFT (and start, where this vLLM reports it): a p50 over waves of requests that arrive
    # together needs the distribution to be read.
    keep["ttfts_ms"] = [round(1000 * t, 2) for t in result.get("ttfts", [])]
    starts = result.get("start_times") or []
    first = min(starts, default=0.0)
    keep["start_times_s"] = [round(t - first, 4) for t in starts]
    expected = num_prompts * output_len
    keep.update(
        server=server.label, concurrency=concurrency, num_prompts=num_prompts, input_len=input_len,
        output_len=output_len, expected_output_tokens=expected,
        tokens_ok=result.get("completed") == num_prompts and result.get("total_output_tokens") == expected,
        server_cpu_s_by_role=cpu, server_cpu_s=round(sum(cpu.values()), 3),
        machine_busy_cpu_s=round(busy, 2), machine_busy_cores=round(busy / wall, 2) if wall else None,
        wall_s_incl_warmup=round(wall, 2), loadavg_before=load_before, loadavg_after=loadavg(),
    )
    return keep


# ---- summaries -------------------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    """median [min-max] of repeated runs."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def save(name: str, payload: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path


# ---- fixed per-request latency -------------------------------------------------------------------------------


def probe_latency(server: Server, served_name: str, n: int = 40) -> dict[str, float]:
    """p50/p95 ms of sequential small requests: GET /v1/models (no engine: pure serving path) and a 1-token
    streaming completion of a 1-token prompt (the serving path plus one engine step)."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(server.base_url)
    body = json.dumps({"model": served_name, "prompt": [5], "max_tokens": 1, "stream": True, "temperature": 0,
                       "ignore_eos": True})
    out: dict[str, float] = {}
    for name, method, path, payload in (("models", "GET", "/v1/models", None),
                                        ("completion_1tok_stream", "POST", "/v1/completions", body)):
        times = []
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        for i in range(n + 3):
            start = time.perf_counter()
            connection.request(method, url.path + path, body=payload, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{server.label} {path}: HTTP {response.status}")
            if i >= 3:  # warm-up
                times.append(1000 * (time.perf_counter() - start))
        connection.close()
        times.sort()
        out[f"{name}_p50_ms"] = round(statistics.median(times), 2)
        out[f"{name}_p95_ms"] = round(times[int(0.95 * (len(times) - 1))], 2)
    return out
