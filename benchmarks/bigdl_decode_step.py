"""One BigDL-LLM sym_int8 decode step, outside Ray and the scheduler: where a token's time goes (issue 17; the ONNX
Runtime counterpart is onnx_decode_step.py).

    .venv-bigdl/bin/python benchmarks/bigdl_decode_step.py --model MODEL_DIR [--threads 2] [--rows 1 8] [--profile]

Milliseconds per step through our left-padded batch (`LeftPaddedBatch`, as the engine runs it) and through the
model alone (its own cache, no attention mask), and the time in BigDL-LLM's low-bit linears (each call timed, by
shape). --profile adds torch's operator counts per step. The low-bit cache is the engine's (built on first use).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = list(range(100, 220))  # 120 tokens, as the yardstick's prompts
STEPS = 60


def _per_step(step, *args, steps: int = STEPS) -> float:
    """Seconds per call of step(*args), after 5 unmeasured ones."""
    for _ in range(5):
        step(*args)
    started = time.perf_counter()
    for _ in range(steps):
        step(*args)
    return (time.perf_counter() - started) / steps


def bigdl(options: argparse.Namespace) -> None:
    import torch
    from bigdl.llm.transformers.low_bit_linear import LowBitLinear

    from serving_app.engines.bigdl.compat import apply_rope_theta
    from serving_app.engines.bigdl.engine import load_low_bit_model
    from serving_app.engines.bigdl.left_padded import HFCausalLM, LeftPaddedBatch

    torch.set_num_threads(options.threads)
    model, _, _ = load_low_bit_model(options.model, "sym_int8")
    apply_rope_theta(model)
    model.eval()
    spent: collections.Counter = collections.Counter()
    forward = LowBitLinear.forward

    def timed(self, x):
        started = time.perf_counter()
        try:
            return forward(self, x)
        finally:
            spent[f"{self.in_features}x{self.out_features}"] += time.perf_counter() - started

    LowBitLinear.forward = timed
    with torch.inference_mode():
        for rows in options.rows:
            batch = LeftPaddedBatch(HFCausalLM(model), 0)
            tokens = [int(t) for t in batch.prefill([PROMPT] * rows).argmax(dim=-1)]
            ours = _per_step(batch.decode, tokens)
            state = {"past": model(input_ids=torch.tensor([PROMPT] * rows), use_cache=True).past_key_values}

            def alone(nxt: torch.Tensor, state: dict = state) -> None:  # the model's own cache, no mask
                state["past"] = model(input_ids=nxt, past_key_values=state["past"], use_cache=True).past_key_values

            spent.clear()
            bare = _per_step(alone, torch.tensor([[t] for t in tokens]))
            linears = {shape: round(seconds / (STEPS + 5) * 1e3, 2) for shape, seconds in spent.items()}
            print(f"bigdl sym_int8, {options.threads} threads, {rows} rows: ours {ours * 1e3:.1f} ms/step, "
                  f"model alone {bare * 1e3:.1f} ms/step, of which low-bit linears "
                  f"{sum(linears.values()):.1f} ms {linears}", flush=True)
            if options.profile:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CPU]) as trace:
                    _per_step(alone, torch.tensor([[t] for t in tokens]), steps=20)
                ops = sorted(trace.key_averages(), key=lambda op: op.self_cpu_time_total, reverse=True)
                print(f"  torch operators per step: {sum(op.count for op in ops) / 25:.0f}; by own time: " + ", ".join(
                    f"{op.key} {op.count / 25:.0f}x" for op in ops[:8]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a Hugging Face model directory (the engine's model_name)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--profile", action="store_true", help="torch's operators per step")
    bigdl(parser.parse_args())


if __name__ == "__main__":
    main()
