"""How a replica reserves what its engine uses (Ray resources), for each tensor-parallel mode (no Ray needed)."""

from __future__ import annotations

import pytest

from serving_app.placement import deployment_options
from serving_app.serve_args import parse_serve_args

GPU_STACK_ARGS = {"model_name": "/models/llama-2-70b", "data_type": "bfloat16", "gpu_count": 4, "num_replicas": 4,
                  "max_ongoing_requests": 256, "num_cpus": 20}


def test_tensor_parallel_replica_reserves_one_bundle_per_gpu_on_one_node():
    options = deployment_options(parse_serve_args(GPU_STACK_ARGS))
    assert options["placement_group_bundles"] == [{"CPU": 20.0}, {"GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0},
                                                  {"GPU": 1.0}]
    assert options["placement_group_strategy"] == "STRICT_PACK"
    # vLLM's Ray workers take the GPU bundles: the replica actor itself holds none.
    assert options["ray_actor_options"] == {"num_cpus": 20.0}
    assert options["num_replicas"] == 4


def test_mp_executor_replica_holds_its_gpus_itself():
    args = parse_serve_args({**GPU_STACK_ARGS, "engine_kwargs": {"distributed_executor_backend": "mp"}})
    options = deployment_options(args)
    assert "placement_group_bundles" not in options
    assert options["ray_actor_options"] == {"num_cpus": 20.0, "num_gpus": 4}


def test_single_gpu_replica_asks_for_one_gpu():
    options = deployment_options(parse_serve_args({**GPU_STACK_ARGS, "gpu_count": 1}))
    assert "placement_group_bundles" not in options
    assert options["ray_actor_options"] == {"num_cpus": 20.0, "num_gpus": 1}


@pytest.mark.vllm
def test_vllm_uses_ray_executor_for_tensor_parallelism_unless_told_otherwise():
    pytest.importorskip("vllm")
    from serving_app.engines.vllm_engine import VLLMEngine

    assert VLLMEngine(parse_serve_args(GPU_STACK_ARGS)).engine_args().distributed_executor_backend == "ray"
    mp = parse_serve_args({**GPU_STACK_ARGS, "engine_kwargs": {"distributed_executor_backend": "mp"}})
    assert VLLMEngine(mp).engine_args().distributed_executor_backend == "mp"
