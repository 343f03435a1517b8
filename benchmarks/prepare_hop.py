"""What the hop to a thread costs a request's preparation (serving_app.api.OpenAIAPI.prepare), on the event loop
that also streams other requests' tokens.

    .venv/bin/python benchmarks/prepare_hop.py [--tokenizer MODEL_DIR] [--burst 32] [--busy 0.5] [--idle 2]

A burst of --burst completion bodies (a ~180-character prompt) arrives at once; each is parsed with our pydantic
model (and tokenized with --tokenizer's tokenizer) either on the loop or through a 2-thread pool, as `prepare` does
for large bodies. The loop is idle, or kept busy by 4 tasks that each compute --busy ms then sleep --idle ms (the
shape of a loop writing many streams' events). Printed: each burst's median and last request's time to prepared,
the median over 20 bursts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_app.api import PREPARE_THREADS  # noqa: E402
from serving_app.protocol import CompletionRequest  # noqa: E402

BODY = json.dumps({"model": "m", "prompt": "the cluster serves " * 10, "max_tokens": 256, "stream": True}).encode()


async def busy(stop: asyncio.Event, busy_s: float, idle_s: float) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < busy_s:
            pass
        await asyncio.sleep(idle_s)


async def burst(prepare, size: int, pool: ThreadPoolExecutor, inline: bool) -> list[float]:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()

    async def one() -> float:
        if inline:
            prepare(BODY)
        else:
            await loop.run_in_executor(pool, prepare, BODY)
        return time.perf_counter() - started

    return sorted(await asyncio.gather(*(one() for _ in range(size))))


async def measure(options: argparse.Namespace) -> None:
    tokenizer = None
    if options.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(options.tokenizer)

    def prepare(raw: bytes):
        body = CompletionRequest.model_validate_json(raw)
        return tokenizer.encode(body.prompt) if tokenizer is not None else body

    pool = ThreadPoolExecutor(PREPARE_THREADS)
    for loaded in (False, True):
        stop = asyncio.Event()
        load = [asyncio.create_task(busy(stop, options.busy / 1000, options.idle / 1000)) for _ in range(4)] \
            if loaded else []
        await asyncio.sleep(0.05)
        for inline in (False, True):
            bursts = [await burst(prepare, options.burst, pool, inline) for _ in range(20)]
            middle = statistics.median(b[len(b) // 2] for b in bursts) * 1000
            last = statistics.median(b[-1] for b in bursts) * 1000
            print(f"loop {'busy' if loaded else 'idle'}, {'on the loop' if inline else 'thread pool'}: a burst of "
                  f"{options.burst} prepared, median request {middle:.2f} ms, last {last:.2f} ms", flush=True)
        stop.set()
        await asyncio.gather(*load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", help="a model directory whose tokenizer also encodes each prompt")
    parser.add_argument("--burst", type=int, default=32)
    parser.add_argument("--busy", type=float, default=0.5, help="ms each load task computes before it sleeps")
    parser.add_argument("--idle", type=float, default=2.0, help="ms each load task sleeps")
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
