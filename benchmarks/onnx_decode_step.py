"""Time one ONNX Runtime decode step of a converted model, outside Serve (the "raw decode step" table of issue 3).

    .venv-onnx/bin/python benchmarks/onnx_decode_step.py MODEL_DIR [--before OLD_DIR] [--batch 1 8] [--threads 1 2]
        [--cached 200] [--profile] [--int8-kv] [--weight-only FP32_DIR] [--against OTHER_DIR [--rounds 30]]

MODEL_DIR is a `serving_app.convert` output (attention rewritten, KV cache in place), timed through the engine's own
`SharedKVCacheModel` binding. --before OLD_DIR times a conversion made before the rewrite (Optimum's graph: past
fed in, present returned by Concat) the way the old engine ran it. --profile adds ONNX Runtime's kernel time by op
type; --int8-kv also times the same graph with GroupQueryAttention's int8 cache (static per-tensor scales; speed
only, the scales are not calibrated). --weight-only FP32_DIR also times ONNX Runtime's weight-only 8-bit graph
(`MatMulNBits`, block 32, int8 compute) made from a float32 conversion of the same model (`python -m
serving_app.convert onnx --no-quantize`; needs the `onnx_ir` package). --against OTHER_DIR times another in-place
conversion (one by an earlier commit, say) alternately with MODEL_DIR in one process and gives their median ratio.
Random token ids and cache contents: only the time matters here.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _session(path: Path, threads: int, profile: bool = False):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tempfile.gettempdir(), "onnx_decode_step")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _median_ms(step, runs: int) -> float:
    step()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _kernel_ms_by_op(session, runs: int) -> dict[str, float]:
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    return {op: round(us / (runs + 1) / 1000, 2) for op, us in totals.most_common(14)}


def in_place_step(path: Path, batch: int, threads: int, cached: int, runs: int, profile: bool = False):
    """(session, step): one decode step through the engine's binding, every row holding `cached` tokens."""
    from serving_app.engines.onnxruntime.kv_cache import SharedKVCacheModel

    session = _session(path, threads, profile)
    model = SharedKVCacheModel(session, max_rows=batch, max_len=cached + runs + 8, pad_token_id=0)
    model.reserve(cached + runs + 2)
    rng = np.random.default_rng(0)
    for name in model.buffers:  # as if `cached` tokens had been prefilled
        model.buffers[name][:] = rng.standard_normal(model.buffers[name].shape) * 20
    model.lengths = [cached] * batch
    tokens = rng.integers(5, 100, size=batch).tolist()

    def step():
        model.decode(tokens)
        model.lengths = [cached] * batch  # every step at the same cache length

    return session, step


def time_in_place(path: Path, batch: int, threads: int, cached: int, runs: int, profile: bool) -> dict:
    session, step = in_place_step(path, batch, threads, cached, runs, profile)
    result = {"ms": round(_median_ms(step, runs), 2)}
    if profile:
        result["kernel_ms_by_op"] = _kernel_ms_by_op(session, runs)
    return result


def time_side_by_side(path: Path, other: Path, batch: int, threads: int, cached: int, rounds: int) -> dict:
    """Both conversions' steps in one process, alternating rounds of 10 (the VM's drift shared by both)."""
    steps = [in_place_step(graph, batch, threads, cached, 10)[1] for graph in (path, other)]
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for step, kept in zip(steps, times):
            kept.append(_median_ms(step, 10))
    return {"ms": round(statistics.median(times[0]), 2), "against_ms": round(statistics.median(times[1]), 2),
            "ratio_to_against": round(statistics.median(a / b for a, b in zip(*times)), 3), "rounds": rounds}


def time_concat(path: Path, batch: int, threads: int, cached: int, runs: int) -> dict:
    """A decode step of Optimum's graph: the whole past in, the whole present (past + 1) out."""
    session = _session(path, threads)
    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(5, 100, size=(batch, 1)), "position_ids": np.full((batch, 1), cached),
            "attention_mask": np.ones((batch, cached + 1), np.int64)}
    for i in session.get_inputs():
        if i.name.startswith("past_key_values."):
            feed[i.name] = rng.standard_normal((batch, i.shape[1], cached, i.shape[3])).astype(np.float32)
    return {"ms": round(_median_ms(lambda: session.run(None, feed), runs), 2)}


def int8_cache_variant(path: Path, out: Path) -> Path:
    """The same graph with GroupQueryAttention keeping an int8 cache (per-tensor static scale 0.05)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(np.array([0.05], np.float32), name)
                              for name in ("kv/k_scale", "kv/v_scale")])
    for node in graph.node:
        if node.op_type == "GroupQueryAttention":
            inputs = list(node.input) + [""] * (12 - len(node.input)) + ["kv/k_scale", "kv/v_scale"]
            del node.input[:]
            node.input.extend(inputs)
            node.attribute.extend([helper.make_attribute("k_quant_type", "PER_TENSOR"),
                                   helper.make_attribute("v_quant_type", "PER_TENSOR"),
                                   helper.make_attribute("kv_cache_bit_width", 8)])
    for value in list(graph.input) + list(graph.output):
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.elem_type = TensorProto.INT8
    onnx.save(model, str(out))
    return out


def weight_only_variant(fp32_dir: Path, out: Path) -> Path:
    """The float32 conversion with every constant-weight MatMul as an 8-bit MatMulNBits (int8 compute)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_dir / "model.onnx")), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return out


def graph_file(conversion: Path) -> Path:
    """The ONNX file of a `serving_app.convert` output, as its marker names it."""
    return conversion / json.loads((conversion / "serving_app_artifact.json").read_text())["file_name"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="serving_app.convert output (KV cache in place)")
    parser.add_argument("--before", type=Path, help="a conversion made before the attention rewrite")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cached", type=int, default=200, help="tokens in every row's cache")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--int8-kv", action="store_true")
    parser.add_argument("--weight-only", type=Path, metavar="FP32_DIR", help="a float32 conversion of the model")
    parser.add_argument("--against", type=Path, metavar="OTHER_DIR",
                        help="another in-place conversion (e.g. by an earlier commit), timed alternately with MODEL_DIR")
    parser.add_argument("--rounds", type=int, default=30, help="--against: alternating rounds of 10 steps")
    options = parser.parse_args()
    graph = graph_file(options.model)
    file_name = graph.name
    with tempfile.TemporaryDirectory() as scratch:
        int8_graph = int8_cache_variant(graph, Path(scratch) / "int8-kv.onnx") if options.int8_kv else None
        weight_only = (weight_only_variant(options.weight_only, Path(scratch) / "weight-only.onnx")
                       if options.weight_only else None)
        for threads in options.threads:
            for batch in options.batch:
                row = {"threads": threads, "batch": batch, "cached": options.cached, "loadavg": os.getloadavg()[0]}
                if options.before:
                    row["before_concat"] = time_concat(options.before / file_name, batch, threads, options.cached,
                                                       options.runs)
                row["in_place"] = time_in_place(graph, batch, threads, options.cached, options.runs, False)
                if options.profile:  # a separate session: profiling slows the step it measures
                    row["in_place_kernel_ms_by_op"] = time_in_place(graph, batch, threads, options.cached,
                                                                    options.runs, True)["kernel_ms_by_op"]
                if options.against:
                    row["side_by_side"] = time_side_by_side(graph, graph_file(options.against), batch, threads,
                                                            options.cached, options.rounds)
                if int8_graph:
                    row["in_place_int8_kv"] = time_in_place(int8_graph, batch, threads, options.cached, options.runs,
                                                            False)
                if weight_only:
                    row["in_place_weight_only_int8"] = time_in_place(weight_only, batch, threads, options.cached,
                                                                     options.runs, False)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
