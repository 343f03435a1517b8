"""Issue 14: the cost of one serving-metrics recording call inside a Ray worker, beside Ray's own and vLLM's own
Ray wrapper (the per-call figures RESULTS.md turns into a per-step overhead).

    .venv/bin/python benchmarks/metrics_cost.py [--calls 20000] [--rounds 6]

Prints each path's microseconds per call: min and median over the rounds (this VM's other work makes the spread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402


@ray.remote(num_cpus=0)
class Bench:
    def run(self, calls: int) -> dict[str, float]:
        from ray.util import metrics as ray_metrics
        from vllm.v1.metrics.ray_wrappers import RayHistogramWrapper

        from serving_app import metrics
        from serving_app.engines.vllm_stats import prometheus_classes

        labels = metrics.MetricLabels("m", "vllm", "CPU")
        recorder = metrics.Recorder(metrics.RaySink(), labels,
                                    [metrics.INTER_TOKEN_LATENCY, metrics.GENERATION_TOKENS, metrics.RUNNING])
        raw = ray_metrics.Histogram("bench_raw", boundaries=list(metrics.TOKEN_LATENCY_BUCKETS),
                                    tag_keys=metrics.BASE_LABELS)
        _, _, histogram = prometheus_classes(metrics.RaySink(), labels)
        facade = histogram(name="vllm:bench_facade", labelnames=["model_name", "engine"], buckets=[0.1, 1]).labels(
            "m", "0")
        vllms = RayHistogramWrapper(name="vllm:bench_wrapper", labelnames=["model_name", "engine"],
                                    buckets=[0.1, 1]).labels("m", "0")
        tags = labels.tags()
        paths = {
            "Ray Histogram.observe (direct)": lambda i: raw.observe(0.01, tags=tags),
            "Recorder.record: histogram (CPU engines)": lambda i: recorder.record(metrics.INTER_TOKEN_LATENCY, 0.01),
            "Recorder.record: counter": lambda i: recorder.record(metrics.GENERATION_TOKENS, 1),
            "Recorder.record: gauge (kept for re-set)": lambda i: recorder.record(metrics.RUNNING, i % 4),
            "vLLM stat logger through vllm_stats (ours)": lambda i: facade.observe(0.01),
            "vLLM stat logger through vLLM's RayHistogramWrapper": lambda i: vllms.observe(0.01),
        }
        result = {}
        for name, call in paths.items():
            start = time.perf_counter()
            for i in range(calls):
                call(i)
            result[name] = (time.perf_counter() - start) / calls * 1e6
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=6)
    options = parser.parse_args()
    ray.init(num_cpus=1, include_dashboard=False)
    bench = Bench.remote()
    rounds = [ray.get(bench.run.remote(options.calls)) for _ in range(options.rounds)]
    ray.shutdown()
    print(json.dumps({"loadavg": Path("/proc/loadavg").read_text().split()[:3]}))
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        print(f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
