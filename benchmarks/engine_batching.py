"""Issue 3: a CPU engine alone, in this process (no Ray Serve, no HTTP, no load generator): batched vs. batch size 1.

    .venv-onnx/bin/python benchmarks/engine_batching.py --engine onnxruntime \
        --model /tmp/serving-bench/models/llama-100m-onnx-int8-avx512_vnni --threads 2
    .venv-bigdl/bin/python benchmarks/engine_batching.py --engine bigdl --model /tmp/serving-bench/models/llama-100m \
        --threads 1

Runs the engine class the replica runs (its own loading, `BatchScheduler`, sampling and detokenization) on the same
workload as `cpu_engines.py`: random prompts of --input-len tokens, --output-len output tokens (ignore_eos,
greedy); batch_size --batch-size at 1 and at --batch-size concurrent streams, against batch_size 1 at one stream
("the reference's way", one request at a time). What this leaves out is exactly what `cpu_engines.py` adds: the
serving path (Ray, HAProxy, HTTP, the client), which on a machine with few cores takes CPU from the engine's
threads. Writes benchmarks/results/engine-<engine><tag>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, loadavg, machine_info, median, save, spread  # noqa: E402

TARGET = {"onnxruntime": "AMD", "bigdl": "INTEL"}
COLUMNS = ("output_throughput", "p50_ttft_ms", "p50_itl_ms")


async def one_pass(engine, concurrency: int, options: argparse.Namespace, rng: random.Random, label: str) -> dict:
    from serving_app.engines.base import GenerationRequest, SamplingOptions

    vocab = len(engine.tokenizer)

    async def stream(index: int) -> tuple[float, list[float]]:
        prompt = [rng.randrange(10, vocab) for _ in range(options.input_len)]
        sampling = SamplingOptions(max_tokens=options.output_len, temperature=0.0, ignore_eos=True)
        started, arrivals = time.perf_counter(), []
        async for chunk in engine.generate(GenerationRequest(f"{label}-{index}", prompt, sampling)):
            arrivals.extend([time.perf_counter()] * (chunk.num_generated_tokens - len(arrivals)))
        return started, arrivals

    started = time.perf_counter()
    results = await asyncio.gather(*(stream(i) for i in range(concurrency)))
    wall = time.perf_counter() - started
    tokens = sum(len(arrivals) for _, arrivals in results)
    assert tokens == concurrency * options.output_len, f"{tokens} tokens, expected {concurrency * options.output_len}"
    return {
        "concurrency": concurrency, "output_throughput": tokens / wall, "wall_s": wall,
        "p50_ttft_ms": statistics.median(arrivals[0] - start for start, arrivals in results) * 1000,
        "p50_itl_ms": statistics.median(b - a for _, arrivals in results for a, b in zip(arrivals, arrivals[1:])) * 1000,
        "loadavg": loadavg(),
    }


async def measure(options: argparse.Namespace, batch_size: int, concurrency: int) -> list[dict]:
    from serving_app.engines.registry import create_engine
    from serving_app.serve_args import ServeArgs

    args = ServeArgs.model_validate({
        "model_name": str(options.model), "engine": options.engine, "target_device": TARGET[options.engine],
        "data_type": "int8", "max_model_len": options.max_model_len, "batch_size": batch_size,
        "num_cpus": options.threads,
    })
    engine = create_engine(args)
    await engine.start()
    try:
        rng = random.Random(0)
        await one_pass(engine, concurrency, options, rng, "warmup")
        runs = []
        for rep in range(options.reps):
            run = await one_pass(engine, concurrency, options, rng, f"rep{rep}")
            run.update(batch_size=batch_size, rep=rep, mode="batched" if batch_size > 1 else "reference")
            print(f"[engine] {options.engine} batch_size {batch_size} c={concurrency} rep {rep}: "
                  f"{run['output_throughput']:.1f} tok/s, TTFT p50 {run['p50_ttft_ms']:.0f} ms, "
                  f"ITL p50 {run['p50_itl_ms']:.2f} ms", flush=True)
            runs.append(run)
        return runs
    finally:
        await engine.shutdown()


def table(runs: list[dict]) -> str:
    """median [min-max] over repetitions, as cpu_engines.py's tables; the ratio divides medians."""
    groups = {key: [r for r in runs if (r["mode"], r["concurrency"]) == key]
              for key in (("batched", 1), ("batched", 8), ("reference", 1))}
    reference = median([r["output_throughput"] for r in groups["reference", 1]])
    header = ["| mode | concurrency | output tok/s | TTFT p50 ms | ITL p50 ms | x reference's way | runs |",
              "|---|---|---|---|---|---|---|"]
    return "\n".join(header + [
        f"| {mode} | {concurrency} | " + " | ".join(spread([r[key] for r in group]) for key in COLUMNS)
        + f" | {median([r['output_throughput'] for r in group]) / reference:.2f} | {len(group)} |"
        for (mode, concurrency), group in groups.items() if group])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", required=True, choices=sorted(TARGET))
    parser.add_argument("--model", type=Path, required=True, help="what the engine serves (model_name)")
    parser.add_argument("--threads", type=int, default=1, help="num_cpus: the engine's compute threads")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--tag", default="")
    options = parser.parse_args()

    runs: list[dict] = []
    for batch_size, concurrency in ((options.batch_size, 1), (options.batch_size, options.batch_size), (1, 1)):
        runs += asyncio.run(measure(options, batch_size, concurrency))
    result = {"issue": 3, "engine": options.engine, "options": {k: str(v) for k, v in vars(options).items()},
              "command": " ".join(sys.argv), "machine": machine_info(), "runs": runs, "table": table(runs)}
    save(f"engine-{options.engine}{options.tag}.json", result)
    print(result["table"])
    print(f"written: {RESULTS / f'engine-{options.engine}{options.tag}.json'}")


if __name__ == "__main__":
    main()
