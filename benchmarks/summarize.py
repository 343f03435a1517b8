"""One table over every engine measured by cpu_engines.py (benchmarks/results/cpu-*.json), for RESULTS.md.

    .venv/bin/python benchmarks/summarize.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, median, spread  # noqa: E402


def main() -> None:
    lines = ["| engine (precision) | weights read / step | BW limit, 1 stream | mode | concurrency | output tok/s | "
             "TTFT p50 ms | TTFT p95 ms | ITL p50 ms | x reference's way | x BW limit | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("cpu-*.json")):
        data = json.loads(path.read_text())
        runs = data.get("runs", [])
        if not runs:
            continue
        bandwidth = data.get("read_bandwidth_gbs")
        limit = bandwidth * 1e9 / data["weight_bytes_per_token"] if bandwidth else None
        ref = median([r["output_throughput"] for r in runs if r["mode"] == "reference" and r["concurrency"] == 1])
        extra = json.loads(data["options"].get("extra_args") or "{}")
        threads = "1 OMP thread (vLLM's binding)" if data["engine"] == "vllm" else \
            f"{int(extra.get('num_cpus', 1))} thread(s)"
        precision = data["precision"].split(";")[0].split("(")[0].strip()
        if data["engine"] == "onnxruntime":
            precision += f" {data['options'].get('onnx_quantization', 'avx2')}"
        first = True
        for mode, conc in (("batched", 1), ("batched", 8), ("reference", 1), ("reference", 8)):
            rows = [r for r in runs if r["mode"] == mode and r["concurrency"] == conc]
            if not rows:
                continue
            tput = [r["output_throughput"] for r in rows]
            head = (f"| **{data['engine']}** ({precision}, {threads}) | {data['weight_bytes_per_token'] / 1e6:.1f} MB "
                    f"| {limit:.0f} tok/s |" if first and limit else f"| {data['engine']} | | |")
            first = False
            label = f"batched (batch_size {rows[0]['batch_size']})" if mode == "batched" else "reference's way (batch 1)"
            lines.append(
                f"{head} {label} | {conc} | {spread(tput)} | {spread([r['p50_ttft_ms'] for r in rows])} | "
                f"{spread([r['p95_ttft_ms'] for r in rows])} | {spread([r['p50_itl_ms'] for r in rows])} | "
                f"{median(tput) / ref:.2f} | " + (f"{median(tput) / limit:.2f}" if limit else "n/a")
                + f" | {len(rows)} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
