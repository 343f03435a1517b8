"""The AMD CPU engine and its conversion command: the converted layout, failures that leave nothing behind, the
engine's answer to a plain Hugging Face model, startup conversion, and batching through ONNX Runtime. Runs in
the Optimum environment (.venv-onnx); skipped where Optimum's ONNX Runtime support is absent."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.onnxruntime
pytest.importorskip("optimum.onnxruntime")  # collection elsewhere; the marker makes its own environment run it

from serving_app import artifacts  # noqa: E402
from serving_app.engines.base import GenerationRequest, SamplingOptions  # noqa: E402
from serving_app.engines.onnxruntime.convert import resolve_quantization  # noqa: E402
from serving_app.engines.onnxruntime.engine import OnnxRuntimeEngine  # noqa: E402
from serving_app.engines.onnxruntime.kv_cache import SharedKVCacheModel  # noqa: E402
from serving_app.engines.onnxruntime.model_dir import OnnxModelError, resolve_onnx_model  # noqa: E402
from serving_app.engines.options import OnnxRuntimeOptions  # noqa: E402
from serving_app.serve_args import parse_serve_args  # noqa: E402
from tests.engine_cases import convert_to_onnx  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = OnnxRuntimeOptions()  # the engine's default engine_kwargs: refuse what is not converted


def convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving_app.convert", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO_ROOT)


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.fixture(scope="module")
def converted(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    return {
        "int8": convert_to_onnx(tiny_model, root / "int8"),
        "float32": convert_to_onnx(tiny_model, root / "float32", "--no-quantize"),
    }


def test_conversion_writes_a_sealed_int8_model_with_config_and_tokenizer(converted: dict[str, Path]):
    out = converted["int8"]
    record, why = artifacts.inspect(out)
    assert record is not None, why
    assert record["kind"] == "onnx" and record["data_type"] == "int8" and record["file_name"] == "model.onnx"
    for name in ("model.onnx", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert siblings(out) == ["float32", "int8"], "staging directories left behind"
    import onnx

    graph = onnx.load(str(out / "model.onnx"))
    assert any(node.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for node in graph.graph.node), \
        "the model is not int8"
    # Only weight MatMuls are int8: attention's (and rotary's) MatMuls of two activations stay float32, else the
    # whole KV cache is re-quantized every decode step.
    constants = {init.name for init in graph.graph.initializer}
    int8 = [node for node in graph.graph.node if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert int8 and all(node.input[1] in constants for node in int8), \
        [node.name for node in int8 if node.input[1] not in constants]
    float_graph = onnx.load(str(converted["float32"] / "model.onnx"))
    assert not any(node.op_type == "MatMulInteger" for node in float_graph.graph.node)
    assert json.loads((converted["float32"] / artifacts.MARKER).read_text())["data_type"] == "float32"
    # Both: every layer's attention updates the KV cache in place (past and present are one buffer), no Concat.
    for model in (graph, float_graph):
        layers = sum(1 for i in model.graph.input if i.name.endswith(".key"))
        producers = {out: node for node in model.graph.node for out in node.output}
        for layer in range(layers):
            node = producers[f"present.{layer}.key"]
            assert node.op_type == "GroupQueryAttention" and node is producers[f"present.{layer}.value"]
            assert list(node.input[3:5]) == [f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"]
            # ...and rotates the new query and key itself: the export's rotate_half (Neg) is gone.
            attributes = {a.name: a.i for a in node.attribute if a.name in ("do_rotary", "rotary_interleaved")}
            assert attributes == {"do_rotary": 1, "rotary_interleaved": 0}
            assert list(node.input[7:9]) == ["kv/cos_cache", "kv/sin_cache"]
        assert not any(node.op_type == "Neg" for node in model.graph.node)
        assert record["kv_cache"] == "shared-buffer" and record["graph"] == "gqa-rotary"


def test_a_failed_conversion_exits_non_zero_and_writes_nothing(tmp_path: Path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    out = tmp_path / "out"
    result = convert("onnx", "--model", str(broken), "--out", str(out))
    assert result.returncode == 1, result.stderr
    assert "error: exporting" in result.stderr and "nothing was written" in result.stderr
    assert siblings(out) == ["broken-model"], "a partial output or staging directory was left"

    missing = convert("--model", str(tmp_path / "absent"), "--out", str(out))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    not_a_model = convert("--model", str(tmp_path), "--out", str(out))
    assert not_a_model.returncode == 1 and "no config.json" in not_a_model.stderr
    assert not out.exists()


def test_an_existing_output_is_kept_unless_forced(tiny_model: Path, converted: dict[str, Path]):
    out = converted["int8"]
    before = artifacts.inspect(out)[0]["build_id"]
    refused = convert("--model", str(tiny_model), "--out", str(out))
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert artifacts.inspect(out)[0]["build_id"] == before


def test_the_engine_refuses_a_plain_hugging_face_model_with_the_command_to_convert_it(tiny_model: Path):
    with pytest.raises(OnnxModelError) as refused:
        resolve_onnx_model(str(tiny_model), "int8", DEFAULTS)
    message = str(refused.value)
    assert "is a Hugging Face model directory" in message
    assert f"python -m serving_app.convert onnx --model {tiny_model} --out {tiny_model}-onnx-int8" in message
    assert "engine_kwargs.convert: true" in message
    with pytest.raises(OnnxModelError, match="is not a local directory"):
        resolve_onnx_model("meta-llama/Llama-2-7b-hf", "int8", DEFAULTS)


def test_the_engine_refuses_the_wrong_precision_and_foreign_onnx_files(converted: dict[str, Path], tmp_path: Path):
    with pytest.raises(OnnxModelError, match="holds a float32 ONNX model but data_type is int8"):
        resolve_onnx_model(str(converted["float32"]), "int8", DEFAULTS)
    foreign = Path(shutil.copytree(converted["int8"], tmp_path / "foreign"))
    (foreign / artifacts.MARKER).unlink()
    with pytest.raises(OnnxModelError, match="not produced by serving_app.convert"):
        resolve_onnx_model(str(foreign), "int8", DEFAULTS)
    older = Path(shutil.copytree(converted["int8"], tmp_path / "older"))
    marker = json.loads((older / artifacts.MARKER).read_text())
    del marker["kv_cache"]  # as serving_app.convert wrote it before attention was rewritten
    (older / artifacts.MARKER).write_text(json.dumps(marker))
    with pytest.raises(OnnxModelError, match="older serving_app.convert.*convert again.*--force"):
        resolve_onnx_model(str(older), "int8", DEFAULTS)
    damaged = Path(shutil.copytree(converted["int8"], tmp_path / "damaged"))
    (damaged / "model.onnx").write_bytes(b"")
    with pytest.raises(OnnxModelError, match="damaged or partial.*--force"):
        resolve_onnx_model(str(damaged), "int8", DEFAULTS)


def test_convert_true_converts_once_at_startup(tiny_model: Path, tmp_path: Path):
    model = Path(shutil.copytree(tiny_model, tmp_path / "hf", ignore=shutil.ignore_patterns(".*")))
    directory, record = resolve_onnx_model(str(model), "int8", OnnxRuntimeOptions(convert=True))
    # The default target is this node's CPU (auto): the cache is keyed by what it resolved to.
    target = resolve_quantization("auto")
    assert directory == model / ".onnx-cache" / f"int8-{target}" and record["quantization"] == target
    again, second = resolve_onnx_model(str(model), "int8", OnnxRuntimeOptions(convert=True))
    assert again == directory and second["build_id"] == record["build_id"], "converted twice"
    marker = json.loads((directory / artifacts.MARKER).read_text())
    del marker["graph"]  # as a conversion from before the rotary moved into the attention wrote it
    (directory / artifacts.MARKER).write_text(json.dumps(marker))
    third, renewed = resolve_onnx_model(str(model), "int8", OnnxRuntimeOptions(convert=True))
    assert third == directory and renewed["build_id"] != record["build_id"] and renewed["graph"] == "gqa-rotary"


def _rotated(first: str = "neg", axis: int = -1):
    """x * cos + rotate_half(x) * sin as the export writes it (first="plain": the halves swapped wrongly)."""
    from onnx import helper

    def constant(name: str, value: int):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", 7, [1], [value]))

    halves = ["x2_neg", "x1"] if first == "neg" else ["x1", "x2_neg"]
    return [
        constant("zero", 0), constant("half", 2), constant("end", 4), constant("last", 3), constant("one", 1),
        helper.make_node("Unsqueeze", ["cos", "one"], ["cos_u"]),
        helper.make_node("Unsqueeze", ["sin", "one"], ["sin_u"]),
        helper.make_node("Slice", ["x", "zero", "half", "last"], ["x1"]),
        helper.make_node("Slice", ["x", "half", "end", "last"], ["x2"]),
        helper.make_node("Neg", ["x2"], ["x2_neg"]),
        helper.make_node("Concat", halves, ["turned"], axis=axis),
        helper.make_node("Mul", ["x", "cos_u"], ["direct"]),
        helper.make_node("Mul", ["turned", "sin_u"], ["twisted"]),
        helper.make_node("Add", ["twisted", "direct"], ["rotated"]),
    ]


def test_the_rotary_pattern_is_found_only_in_hugging_faces_form():
    from serving_app.engines.onnxruntime import rotary

    def found(nodes):
        return rotary.find({out: node for node in nodes for out in node.output}, "rotated")

    assert found(_rotated()) == rotary.RotaryInputs("x", "cos", "sin")
    assert found(_rotated(first="plain")) is None  # rotate_half's halves in the other order: not this rotation
    assert found(_rotated(axis=2)) is None  # halves along another axis


def engine_args(model: Path, **overrides: Any):
    return parse_serve_args({"model_name": str(model), "target_device": "AMD", "max_model_len": 512,
                             "batch_size": 8, "batch_timeout": 0.3, **overrides})


async def _serve(engine: OnnxRuntimeEngine, prompts: list[list[int]], max_tokens: int, together: bool) -> list[str]:
    async def one(i: int) -> str:
        request = GenerationRequest(f"r{i}-{together}", prompts[i],
                                    SamplingOptions(max_tokens=max_tokens, temperature=0, ignore_eos=True))
        return "".join([chunk.text async for chunk in engine.generate(request)])

    if together:
        return list(await asyncio.gather(*(one(i) for i in range(len(prompts)))))
    return [await one(i) for i in range(len(prompts))]


PROMPTS = ["the", "a request to the cluster of nodes with memory", "model serve token " * 8]


def test_float32_onnx_output_is_the_same_alone_and_batched(converted: dict[str, Path]):
    engine = OnnxRuntimeEngine(engine_args(converted["float32"], data_type="float32"))

    async def scenario():
        await engine.start()
        try:
            prompts = [engine.tokenizer.encode(p) for p in PROMPTS]
            return await _serve(engine, prompts, 24, False), await _serve(engine, prompts, 24, True)
        finally:
            await engine.shutdown()

    alone, batched = asyncio.run(scenario())
    assert all(alone) and batched == alone


@pytest.fixture(scope="module")
def float32_pairs(tiny_model: Path, converted: dict[str, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """(Hugging Face model, its float32 conversion): the tiny Llama, and one with grouped-query attention."""
    from devtools.tiny_llama import generate

    root = tmp_path_factory.mktemp("gqa")
    grouped = generate(root / "tiny-gqa", "tiny-gqa")
    return {"tiny": (tiny_model, converted["float32"]),
            "grouped-query": (grouped, convert_to_onnx(grouped, root / "float32", "--no-quantize"))}


@pytest.mark.parametrize("shape", ["tiny", "grouped-query"])
def test_the_in_place_cache_matches_transformers_as_rows_join_and_leave(shape: str, float32_pairs):
    """float32 ONNX through SharedKVCacheModel against the transformers model run on each row's whole sequence,
    no cache: prefill of right-padded prompts, rows joining into free slots, a row leaving (later rows move
    down), and the buffer's time axis growing past its first capacity."""
    import onnxruntime
    import torch
    from transformers import AutoModelForCausalLM

    hf_model, onnx_model = float32_pairs[shape]
    reference = AutoModelForCausalLM.from_pretrained(hf_model, torch_dtype=torch.float32).eval()
    session = onnxruntime.InferenceSession(str(onnx_model / "model.onnx"), providers=["CPUExecutionProvider"])
    model = SharedKVCacheModel(session, max_rows=4, max_len=512, pad_token_id=0)
    assert model.kv_heads == reference.config.num_key_value_heads
    rows: list[list[int]] = []

    def expect(logits: torch.Tensor) -> None:
        with torch.inference_mode():
            for row, got in zip(rows, logits):
                want = reference(input_ids=torch.tensor([row])).logits[0, -1]
                assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (len(row), (got - want).abs().max())

    def decode(steps: int) -> None:
        for _ in range(steps):
            tokens = [(row[-1] * 7 + 3) % 200 + 5 for row in rows]
            for row, token in zip(rows, tokens):
                row.append(token)
            expect(model.decode(tokens))

    def prefill(prompts: list[list[int]]) -> None:
        logits = model.prefill(prompts)
        rows.extend(list(p) for p in prompts)
        expect_new = rows[len(rows) - len(prompts):]
        with torch.inference_mode():
            for row, got in zip(expect_new, logits):
                want = reference(input_ids=torch.tensor([row])).logits[0, -1]
                assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)

    prefill([[5, 6, 7], list(range(10, 40))])
    decode(3)
    prefill([list(range(50, 61))])  # joins into slot 2 while rows 0 and 1 hold their caches
    decode(2)
    model.keep([0, 2])  # row 1 leaves: row 2 moves to slot 1
    del rows[1]
    decode(2)
    prefill([list(range(100, 170))])  # 70 tokens: the buffer grows past its first 64 positions
    assert model.capacity == 128
    decode(3)
    model.reset()
    rows.clear()
    prefill([[9, 8, 7, 6]])
    decode(1)


def test_a_graph_without_the_inputs_the_cache_needs_is_refused_when_loaded():
    from types import SimpleNamespace

    class Session:  # the inputs of a decoder exported without position ids
        def get_inputs(self):
            return [SimpleNamespace(name=n, shape=["batch", 2, "time", 64])
                    for n in ("input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value")]

        def get_outputs(self):
            return [SimpleNamespace(name="logits")]

    with pytest.raises(OnnxModelError, match="lacks position_ids: convert it again"):
        SharedKVCacheModel(Session(), max_rows=2, max_len=64, pad_token_id=0)


def test_int8_engine_batches_requests_of_different_lengths(converted: dict[str, Path]):
    engine = OnnxRuntimeEngine(engine_args(converted["int8"], data_type="int8"))

    async def scenario():
        await engine.start()
        try:
            prompts = [engine.tokenizer.encode(p) for p in PROMPTS]
            texts = await _serve(engine, prompts, 16, True)
            return texts, engine.stats()
        finally:
            await engine.shutdown()

    texts, stats = asyncio.run(scenario())
    # Dynamic int8 quantizes activations per tensor, over the whole batch: batched outputs may differ slightly
    # from single ones, so this checks only that every request got its own full answer.
    assert all(texts) and len(set(texts)) == 3
    assert stats.running_requests == 0 and stats.extra["decode_steps"] < 2 * 16  # one after another: 45


def test_unknown_engine_kwargs_are_refused_before_the_engine_exists(converted: dict[str, Path]):
    with pytest.raises(ValueError, match=r"engine_kwargs.convert_model: not understood.*convert:"):
        engine_args(converted["int8"], engine_kwargs={"convert_model": True})
