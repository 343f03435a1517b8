"""The Intel CPU engine's low-bit cache: built once, reused, rebuilt when partial, corrupt or stale, and safe when
replicas start together. Runs in the BigDL-LLM environment (.venv-bigdl); skipped where BigDL-LLM is absent."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bigdl
pytest.importorskip("bigdl.llm")  # collection elsewhere; the marker makes its own environment run it

import torch  # noqa: E402

from serving_app import artifacts  # noqa: E402
from serving_app.engines.base import GenerationRequest, SamplingOptions  # noqa: E402
from serving_app.engines.bigdl.engine import BigDLEngine, load_low_bit_model  # noqa: E402
from serving_app.serve_args import parse_serve_args  # noqa: E402
REPO_ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)


@pytest.fixture
def model_dir(tiny_model: Path, tmp_path: Path) -> Path:
    """A private copy of the generated model: each test starts without a cache."""
    return Path(shutil.copytree(tiny_model, tmp_path / "tiny-llama", ignore=shutil.ignore_patterns(".*")))


def cache_of(model_dir: Path, precision: str = "sym_int8") -> Path:
    return model_dir / ".bigdl-cache" / precision


def logits(model, ids=(1, 5, 9, 13)) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([list(ids)])).logits[0, -1]


def test_first_start_builds_the_cache_beside_the_model_and_the_next_reloads_it(model_dir: Path):
    built, status, path = load_low_bit_model(str(model_dir), "sym_int8")
    assert status == "built" and path == cache_of(model_dir)
    record, why = artifacts.inspect(path)
    assert record is not None, why
    assert record["precision"] == "sym_int8" and "pytorch_model.bin" in record["files"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "staging left behind"

    reloaded, status, _ = load_low_bit_model(str(model_dir), "sym_int8")
    assert status == "loaded"
    assert torch.equal(logits(built), logits(reloaded))
    assert artifacts.inspect(path)[0]["build_id"] == record["build_id"], "a good cache was rewritten"


def test_int4_is_cached_separately(model_dir: Path):
    load_low_bit_model(str(model_dir), "sym_int8")
    _, status, path = load_low_bit_model(str(model_dir), "sym_int4")
    assert status == "built" and path == cache_of(model_dir, "sym_int4")
    assert artifacts.inspect(cache_of(model_dir))[0] is not None


def _break_marker(path: Path) -> None:
    (path / artifacts.MARKER).unlink()


def _truncate_weights(path: Path) -> None:
    weights = path / "pytorch_model.bin"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _scramble_weights(path: Path) -> None:  # same size, so only loading it shows the damage
    weights = path / "pytorch_model.bin"
    weights.write_bytes(os.urandom(weights.stat().st_size))


@pytest.mark.parametrize("damage", [_break_marker, _truncate_weights, _scramble_weights],
                         ids=["no-marker", "truncated", "corrupt"])
def test_a_partial_or_corrupt_cache_is_detected_and_rebuilt(model_dir: Path, damage):
    original, _, path = load_low_bit_model(str(model_dir), "sym_int8")
    damage(path)
    rebuilt, status, _ = load_low_bit_model(str(model_dir), "sym_int8")
    assert status == "rebuilt"
    assert torch.equal(logits(original), logits(rebuilt))
    assert artifacts.inspect(path)[0] is not None
    _, status, _ = load_low_bit_model(str(model_dir), "sym_int8")
    assert status == "loaded"


def test_a_changed_model_invalidates_its_cache(model_dir: Path, tmp_path: Path):
    load_low_bit_model(str(model_dir), "sym_int8")
    from devtools.tiny_llama import generate

    retrained = generate(tmp_path / "retrained", seed=1)
    shutil.copyfile(retrained / "model.safetensors", model_dir / "model.safetensors")  # same size, new weights
    fresh, status, _ = load_low_bit_model(str(model_dir), "sym_int8")
    assert status == "rebuilt"
    from bigdl.llm.transformers import AutoModelForCausalLM

    direct = AutoModelForCausalLM.from_pretrained(str(model_dir), load_in_low_bit="sym_int8")
    assert torch.equal(logits(fresh), logits(direct))


def test_replicas_starting_together_share_one_intact_cache(model_dir: Path, tmp_path: Path):
    go = tmp_path / "go"
    script = (
        "import sys, time, pathlib, torch\n"
        "torch.set_num_threads(1)\n"
        "from serving_app.engines.bigdl.engine import load_low_bit_model\n"
        "go = pathlib.Path(sys.argv[2])\n"
        "while not go.exists(): time.sleep(0.01)\n"
        "model, status, path = load_low_bit_model(sys.argv[1], 'sym_int8')\n"
        "print(status)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    replicas = [subprocess.Popen([sys.executable, "-c", script, str(model_dir), str(go)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    time.sleep(8)  # all three import BigDL-LLM, then start converting at the same moment
    go.touch()
    results = [(replica.wait(timeout=300), *replica.communicate()) for replica in replicas]
    assert all(code == 0 for code, _, _ in results), [err[-2000:] for _, _, err in results]
    statuses = [out.strip().splitlines()[-1] for _, out, _ in results]
    assert set(statuses) <= {"built", "loaded"}, statuses
    record, why = artifacts.inspect(cache_of(model_dir))
    assert record is not None, why
    leftovers = [p.name for p in cache_of(model_dir).parent.iterdir() if p.name != "sym_int8"]
    assert leftovers == [], leftovers
    _, status, _ = load_low_bit_model(str(model_dir), "sym_int8")
    assert status == "loaded"


def test_publish_keeps_the_first_complete_cache_and_replaces_a_partial_one(tmp_path: Path):
    final = tmp_path / "cache" / "sym_int8"

    def staged(content: str) -> Path:
        staging = artifacts.staging_dir(final)
        (staging / "weights").write_text(content)
        artifacts.seal(staging, {"kind": "test"})
        return staging

    artifacts.publish(staged("first"), final, {"kind": "test"})
    late = staged("second")
    artifacts.publish(late, final, {"kind": "test"})  # lost the race: the published one stays
    assert (final / "weights").read_text() == "first" and not late.exists()

    (final / artifacts.MARKER).unlink()  # now partial: a newcomer replaces it
    artifacts.publish(staged("third"), final, {"kind": "test"})
    assert (final / "weights").read_text() == "third"
    assert sorted(p.name for p in final.parent.iterdir()) == ["sym_int8"]


def test_low_bit_cache_dir_overrides_the_location(model_dir: Path, tmp_path: Path):
    _, status, path = load_low_bit_model(str(model_dir), "sym_int8", cache_dir=str(tmp_path / "shared"))
    assert status == "built" and path.is_relative_to(tmp_path / "shared") and path.name == "sym_int8"
    assert not (model_dir / ".bigdl-cache" / "sym_int8").exists()


def test_the_engine_serves_from_its_cache(model_dir: Path):
    def engine() -> BigDLEngine:
        return BigDLEngine(parse_serve_args({
            "model_name": str(model_dir), "target_device": "INTEL", "data_type": "int8", "max_model_len": 256,
            "batch_size": 4}))

    async def generate_once(instance: BigDLEngine) -> str:
        await instance.start()
        try:
            request = GenerationRequest("r", instance.tokenizer.encode("the model"),
                                        SamplingOptions(max_tokens=8, temperature=0, ignore_eos=True))
            return "".join([chunk.text async for chunk in instance.generate(request)])
        finally:
            await instance.shutdown()

    first, second = engine(), engine()
    text = asyncio.run(generate_once(first))
    assert first.cache_status == "built" and first.stats().extra["low_bit_cache"] == "built"
    assert asyncio.run(generate_once(second)) == text and second.cache_status == "loaded"
    assert second.max_model_len == 256


def test_bad_engine_arguments_are_refused_clearly(model_dir: Path):
    with pytest.raises(ValueError, match=r"engine_kwargs.low_bit_dir: not understood.*low_bit_cache_dir"):
        parse_serve_args({"model_name": str(model_dir), "target_device": "INTEL", "engine_kwargs": {"low_bit_dir": "/x"}})
    engine = BigDLEngine(parse_serve_args({"model_name": str(model_dir), "target_device": "INTEL",
                                           "max_model_len": 4096}))
    with pytest.raises(ValueError, match="max_model_len 4096 exceeds the model's context length"):
        asyncio.run(engine.start())


def test_marker_lists_every_file(model_dir: Path):
    _, _, path = load_low_bit_model(str(model_dir), "sym_int8")
    record = json.loads((path / artifacts.MARKER).read_text())
    on_disk = {p.name for p in path.iterdir() if p.name != artifacts.MARKER}
    assert set(record["files"]) == on_disk


def test_hub_models_cache_beside_the_hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = artifacts.cache_location("meta-llama/Llama-2-7b-chat-hf", "bigdl", "sym_int8")
    assert path.is_relative_to(tmp_path / "hf" / "serving_app" / "bigdl") and path.name == "sym_int8"
    assert path.parent.name.startswith("Llama-2-7b-chat-hf-")
    other = artifacts.cache_location("someone-else/Llama-2-7b-chat-hf", "bigdl", "sym_int8")
    assert other != path, "two hub models with one name must not share a cache"
