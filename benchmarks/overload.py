"""Issue 15: one replica under 4x the load it can serve, with the bounded queue (max_queued_requests) against the
unbounded one Serve had before. Not a test: the numbers go to benchmarks/RESULTS.md and benchmarks/results/.

1. peak: a closed loop of `--ongoing` clients (as many as the replica admits to run) measures what the replica
   serves: requests/s (its capacity), output tokens/s (the peak) and the latency of an un-overloaded replica.
2. overload: Poisson arrivals at `--factor` x that capacity for `--seconds`, no client retries; each request is
   admitted (and completes) or shed (503 + Retry-After). Goodput, the admitted requests' p95 against the peak's,
   the shed rate and output tokens/s against the peak.
3. with `--unbounded`, the same overload against the replica redeployed with an (in effect) unbounded queue.

    .venv/bin/python benchmarks/overload.py                 # vLLM CPU, the ~86M Llama, 8 running + 4 queued
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ensure_model, loadavg, machine_info  # noqa: E402
from devtools.local_ray import LocalRay  # noqa: E402
from infra.serve_config import application  # noqa: E402

ROUTE, SERVED = "/bench", "llama-bench"
WORDS = "the model serves requests on a cluster of nodes with an engine that batches tokens".split()


def app_args(model: Path, ongoing: int, queued: int | None, batch: int) -> dict[str, Any]:
    args = {"model_name": str(model), "served_model_name": SERVED, "target_device": "CPU", "max_model_len": 2048,
            "batch_size": batch, "engine_kwargs": {"kv_cache_memory_bytes": 512 * 2**20}, "num_cpus": 1,
            "max_ongoing_requests": ongoing, "retry_after_s": 1}
    if queued is not None:
        args["max_queued_requests"] = queued
    return args


def prompt(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def one(client: httpx.AsyncClient, url: str, body: dict[str, Any], log: list[dict[str, Any]]) -> None:
    start = time.monotonic()
    entry: dict[str, Any] = {"start": start}
    try:
        response = await client.post(url, json=body)
        entry["status"] = response.status_code
        if response.status_code == 200:
            entry["tokens"] = response.json()["usage"]["completion_tokens"]
        else:
            entry["retry_after"] = response.headers.get("retry-after")
            entry["code"] = response.json()["error"]["code"] if response.text.startswith("{") else response.text[:60]
    except httpx.HTTPError as error:
        entry["status"] = f"error: {type(error).__name__}"
    entry["latency"] = time.monotonic() - start
    log.append(entry)


def summary(log: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    served = [e for e in log if e["status"] == 200]
    shed = [e for e in log if e["status"] == 503]
    latencies = sorted(e["latency"] for e in served)
    shed_latencies = sorted(e["latency"] for e in shed)

    def pct(values: list[float], q: float) -> float | None:
        return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else None

    others = sorted({str(e["status"]) for e in log if e["status"] not in (200, 503)})
    return {
        "requests": len(log), "served": len(served), "shed": len(shed), "other_outcomes": others,
        "shed_rate": round(len(shed) / len(log), 3) if log else None,
        "goodput_rps": round(len(served) / seconds, 3),
        "output_tok_s": round(sum(e["tokens"] for e in served) / seconds, 1),
        "latency_p50_s": pct(latencies, 0.5), "latency_p95_s": pct(latencies, 0.95),
        "latency_max_s": latencies[-1] if latencies else None,
        "shed_latency_p95_s": pct(shed_latencies, 0.95),
        "retry_after": sorted({e.get("retry_after") for e in shed} - {None}),
        "shed_codes": sorted({e.get("code") for e in shed} - {None}),
    }


async def closed_loop(url: str, clients: int, seconds: float, body: dict[str, Any]) -> dict[str, Any]:
    log: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 8)) as client:
        async def worker() -> None:
            while time.monotonic() < deadline:
                await one(client, url, body, log)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.monotonic() - started
    return summary(log, elapsed)


async def open_loop(url: str, rate: float, seconds: float, body: dict[str, Any], seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    log: list[dict[str, Any]] = []
    tasks = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=4096)) as client:
        started = time.monotonic()
        next_at = started
        while next_at < started + seconds:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            tasks.append(asyncio.ensure_future(one(client, url, body, log)))
            next_at += rng.expovariate(rate)
        await asyncio.gather(*tasks)
        # Goodput over the arrival window plus the drain of what was admitted in it.
        elapsed = time.monotonic() - started
    result = summary(log, elapsed)
    result.update(offered_rps=round(rate, 3), arrival_seconds=seconds, elapsed_s=round(elapsed, 1))
    return result


def deploy(ray: LocalRay, args: dict[str, Any]) -> None:
    ray.serve.deploy(ray.serve_config([application("bench", ROUTE, args)]), timeout=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", default="100m")
    parser.add_argument("--ongoing", type=int, default=8, help="max_ongoing_requests (and the engine's batch size)")
    parser.add_argument("--queued", type=int, default=None, help="max_queued_requests (default: the serve arg's)")
    parser.add_argument("--factor", type=float, default=4.0, help="offered load / measured capacity")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--prompt-words", type=int, default=48)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--unbounded", action="store_true", help="also run the overload with an unbounded queue")
    parser.add_argument("--tag", default="")
    options = parser.parse_args()

    model = ensure_model(options.model_size)
    body = {"model": SERVED, "prompt": prompt(random.Random(0), options.prompt_words),
            "max_tokens": options.output_len, "ignore_eos": True, "temperature": 0}
    result: dict[str, Any] = {"machine": machine_info(), "options": vars(options), "load_before": loadavg()}
    ray = LocalRay(num_cpus=4).start()
    try:
        deploy(ray, app_args(model, options.ongoing, options.queued, options.ongoing))
        url = ray.url(ROUTE) + "/v1/completions"
        asyncio.run(closed_loop(url, options.ongoing, 10, body))  # warm-up
        peak = asyncio.run(closed_loop(url, options.ongoing, options.seconds, body))
        peak["load_after"] = loadavg()  # the machine is shared: each phase says how busy it was
        result["peak"] = peak
        print("peak", json.dumps(peak), flush=True)
        rate = options.factor * peak["goodput_rps"]
        result["overload"] = asyncio.run(open_loop(url, rate, options.seconds, body, seed=1))
        result["overload"]["load_after"] = loadavg()
        print("overload", json.dumps(result["overload"]), flush=True)
        if options.unbounded:
            deploy(ray, app_args(model, options.ongoing, 100_000, options.ongoing))
            asyncio.run(closed_loop(url, options.ongoing, 10, body))
            result["overload_unbounded"] = asyncio.run(open_loop(url, rate, options.seconds, body, seed=1))
            result["overload_unbounded"]["load_after"] = loadavg()
            print("overload_unbounded", json.dumps(result["overload_unbounded"]), flush=True)
    finally:
        ray.stop()
    result["load_after"] = loadavg()
    for name in ("overload", "overload_unbounded"):
        if name in result:
            run = result[name]
            run["p95_vs_peak_p95"] = round(run["latency_p95_s"] / peak["latency_p95_s"], 2)
            run["tok_s_vs_peak"] = round(run["output_tok_s"] / peak["output_tok_s"], 3)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"overload-vllm-cpu-{options.model_size}{options.tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
