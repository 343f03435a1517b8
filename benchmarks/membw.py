"""Measured memory bandwidth of this machine (for the memory-bandwidth limit of decoding, issue 3).

    .venv/bin/python benchmarks/membw.py [--reps 10] [--mib 512]

Two independent methods, best of --reps each, on arrays larger than the L3 (DRAM bandwidth):
  - benchmarks/membw.c (STREAM-like read/copy/triad, OpenMP, gcc -O3 -march=native) at 1 thread and at every CPU;
  - numpy: `a.sum()` (read) and `np.copyto(b, a)` (copy) on --mib MiB float64 arrays (one thread).
Also the read bandwidth at the model's weight sizes (--working-set-mib), which a large L3 may hold.
Writes benchmarks/results/membw.json. The read bandwidth is the one decoding is bound by (weights are read once
per forward pass).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import WORK, loadavg, save  # noqa: E402

HERE = Path(__file__).resolve().parent


def c_stream(threads: int, mib: int, reps: int) -> dict:
    binary = WORK / "membw"
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", str(HERE / "membw.c"), "-o", str(binary)], check=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_PROC_BIND": "spread"}
    out = subprocess.run([str(binary), str(mib * 2**20 // 8), str(reps)], env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def numpy_bw(mib: int, reps: int) -> dict:
    import numpy as np

    a = np.ones(mib * 2**20 // 8)
    b = np.empty_like(a)
    best_read = best_copy = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a.sum()
        best_read = min(best_read, time.perf_counter() - t)
        t = time.perf_counter()
        np.copyto(b, a)
        best_copy = min(best_copy, time.perf_counter() - t)
    return {"threads": 1, "array_mib": mib, "read_gbs": round(a.nbytes / best_read / 1e9, 2),
            "copy_gbs": round(2 * a.nbytes / best_copy / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--mib", type=int, default=1024, help="array size for DRAM bandwidth (>> the L3)")
    parser.add_argument("--working-set-mib", type=int, nargs="*", default=[82, 163],
                        help="also read bandwidth at these sizes: the int8 and bf16 weights of the 100M model, "
                             "which may stay in a large L3 (lscpu reports the host's)")
    options = parser.parse_args()
    result = {"loadavg_before": loadavg(), "c_stream": [], "command": " ".join(sys.argv)}
    for threads in sorted({1, os.cpu_count() or 1}):
        result["c_stream"].append(c_stream(threads, options.mib, options.reps))
    result["working_set"] = [c_stream(os.cpu_count() or 1, mib, options.reps * 3) for mib in options.working_set_mib]
    result["numpy"] = numpy_bw(options.mib, options.reps)
    result["loadavg_after"] = loadavg()
    # The DRAM limit: the best read bandwidth over arrays larger than the L3 (both methods).
    result["read_gbs_best"] = max([r["read_gbs"] for r in result["c_stream"]] + [result["numpy"]["read_gbs"]])
    result["read_gbs_working_set"] = {r["array_mib"]: r["read_gbs"] for r in result["working_set"]}
    save("membw.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
