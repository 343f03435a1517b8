"""The preview's GPU checks (infra/gpu_fit.py) on real stack configs: FP8 only on GPUs with FP8 units, a replica
that cannot start refused with its numbers, a short or tight KV cache warned about."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.config import parse_stack_config, to_pulumi_config
from infra.gpu_fit import assess, quantity_bytes
from infra.stack_sections import NodeGroup

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gpu-70b-fp8.yaml"

pytestmark = pytest.mark.skipif("gpu_model" not in NodeGroup.model_fields,
                                reason="node groups do not declare gpuModel/gpuMemory yet (wiring patch pending)")


def stack(app_args=None, **group):
    """The example, with its app's args and both node groups (head and gpu-h200) changed."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    for node_group in (raw["config"]["llm-serving:headGroup"], raw["config"]["llm-serving:workerGroups"][0]):
        node_group.update(group)
        for key in [k for k, v in group.items() if v is None]:
            del node_group[key]
    raw["config"]["llm-serving:serve"]["applications"][0]["args"].update(app_args or {})
    return parse_stack_config(to_pulumi_config(raw))


def test_the_fp8_example_validates_fits_one_h200_and_warns_that_long_sequences_wait():
    problems, warnings = assess(stack())
    assert problems == []
    assert [w.split(":")[0] for w in warnings] == ["serve.applications[0] (llama2-fp8) on node group 'head'",
                                                  "serve.applications[0] (llama2-fp8) on node group 'gpu-h200'"]
    assert "holds 49 sequences of max_model_len 4096 at once, fewer than the 256" in warnings[0]
    assert "1x H200 (139.8 GiB each)" in warnings[0] and "fp8 (16-bit checkpoint quantized while loading" in warnings[0]


def test_fp8_on_gpus_without_fp8_units_is_refused():
    problems, _ = assess(stack(gpuModel="A100-80GB"))
    assert any("FP8 needs NVIDIA Ada, Hopper or newer, or AMD MI300; node group 'gpu-h200' has A100-80GB" in p
               for p in problems)


def test_fp8_on_a_group_that_does_not_say_its_gpu_is_refused():
    problems, warnings = assess(stack(gpuModel=None))
    assert any("does not say its GPU (gpuModel), so that cannot be checked" in p for p in problems)
    assert any("declares no gpuModel or gpuMemory: GPU-memory fit not checked" in w for w in warnings)


def test_a_replica_that_cannot_start_is_refused_with_the_numbers():
    problems, _ = assess(stack({"data_type": "bfloat16"}))
    problem = problems[1]
    assert problem.startswith("serve.applications[0] (llama2-fp8): one replica cannot start on node group 'gpu-h200':"
                              " weights + overhead 130.4 GiB exceed the budget 128.6 GiB")


def test_tensor_parallel_bf16_fits_four_h100s_and_a_short_kv_cache_is_a_warning():
    problems, warnings = assess(stack({"data_type": "bfloat16", "gpu_count": 4, "num_replicas": 2, "batch_size": 32},
                                      gpuModel="H100"))
    assert problems == [] and warnings == []
    problems, warnings = assess(stack({"data_type": "fp8", "batch_size": 32}, gpuModel="H100"))
    assert problems == [] and "holds 5 sequences of max_model_len 4096 at once, fewer than the 32" in warnings[0]


def test_gpu_memory_sizes_a_gpu_the_table_does_not_know_and_unknown_models_are_named():
    problems, warnings = assess(stack({"data_type": "bfloat16", "gpu_count": 4, "batch_size": 32},
                                      gpuModel=None, gpuMemory="80Gi"))
    assert problems == [] and warnings == []  # bf16 needs no FP8 units; 80Gi sizes it
    problems, _ = assess(stack(gpuModel="H800"))
    assert any("gpuModel 'H800' is not one of H200, H100" in p for p in problems)


def test_quantities():
    assert quantity_bytes("141Gi") == 141 * 2**30 and quantity_bytes("80G") == 80 * 10**9
    with pytest.raises(ValueError, match="not a memory quantity"):
        quantity_bytes("lots")


def test_a_tight_fit_is_a_warning_with_its_headroom():
    # 40 sequences of 4096 tokens need 160 of the cache's 198k tokens: 9 % of the budget is left.
    problems, warnings = assess(stack({"batch_size": 40}))
    assert problems == [] and "fits with 9% headroom (10% or more is safe)" in warnings[0]
    assert assess(stack({"batch_size": 40, "engine_kwargs": {"kv_cache_dtype": "fp8"}})) == ([], [])
