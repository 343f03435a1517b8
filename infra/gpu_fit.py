"""Preview-time GPU checks of each vLLM application against the node groups it can land on: FP8 only where the GPUs
have FP8 units, and one replica's memory (serving_app.gpu_memory's estimate) within the group's GPUs. A replica that
cannot start is a problem; one whose KV cache holds fewer full-length sequences than it admits at once, or that fits
with little headroom, a warning. A group says what GPU it has with `gpuModel` (a name in GPU_MODELS) and/or
`gpuMemory` (per GPU, as CUDA reports it: nvidia-smi's memory.total is ~0.4 % more)."""

from __future__ import annotations

import re
from typing import Iterator, Optional

from serving_app.engines.registry import EngineName
from serving_app.engines.vllm_engine import engine_arguments
from serving_app.enums import DataType
from serving_app.gpu_memory import GPU_MODELS, FitEstimate, estimate
from serving_app.model_shapes import local_config

TIGHT = 0.10  # headroom under this share of the budget: the estimate's own error could eat it

_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes quantity (141Gi, 80G, ...) in bytes."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", quantity.strip())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"{quantity!r} is not a memory quantity (e.g. 141Gi, 80G)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def group_gpu(name: str, group) -> tuple[Optional[str], Optional[int], Optional[bool], list[str]]:
    """(GPU name, bytes per GPU, has FP8 units, problems) that a node group declares; None where it does not say."""
    model_name, memory = group.gpu_model, group.gpu_memory
    problems: list[str] = []
    gpu = None
    if model_name is not None:
        gpu = GPU_MODELS.get(model_name)
        if gpu is None:
            problems.append(f"node group '{name}': gpuModel {model_name!r} is not one of {', '.join(GPU_MODELS)} "
                            f"(give gpuMemory for another GPU)")
    size = quantity_bytes(memory) if memory is not None else (gpu.memory_bytes if gpu else None)
    return model_name, size, (gpu.fp8 if gpu else None), problems


def _candidate_groups(stack, args) -> Iterator[tuple[str, object]]:
    """Deployed groups of the app's hardware with enough GPUs and the app's custom resources."""
    for name, group, count in stack.node_groups():
        if (count and group.hardware == args.target_device and group.gpus >= args.tensor_parallel_size
                and all(group.ray_resources.get(k, 0) >= v for k, v in args.resources.items())):
            yield name, group


def assess(stack) -> tuple[list[str], list[str]]:
    """(problems, warnings) of every vLLM application on a GPU target."""
    problems: list[str] = []
    warnings: list[str] = []
    for name, group, _ in stack.node_groups():
        if group.hardware.is_gpu:
            problems += group_gpu(name, group)[3]
    for index, app in enumerate(stack.serve.applications):
        for part, args in app.model_args():
            if args.engine == EngineName.VLLM:
                _assess_model(stack, app.describe(index, part), f"serve.applications[{index}] ({app.name}).{part}",
                              args, problems, warnings)
    return problems, warnings


def _assess_model(stack, where: str, fields: str, args, problems: list[str], warnings: list[str]) -> None:
    """One vLLM model's FP8 and GPU-memory fit; `fields` names its serve args in the stack file."""
    wants_fp8 = args.data_type == DataType.FP8 or args.options.fp8_kv_cache
    try:
        engine_arguments(args, local_config(args.model_name))
    except ValueError as error:
        problems.append(f"{fields}.{error}")
        return
    if not args.target_device.is_gpu:
        if wants_fp8:
            problems.append(f"{where}: FP8 (data_type fp8 / kv_cache_dtype) needs NVIDIA Ada, Hopper or newer, "
                            f"or AMD MI300 GPUs, not target_device {args.target_device.value}")
        return
    for name, group in _candidate_groups(stack, args):
        gpu, size, fp8, _ = group_gpu(name, group)
        if wants_fp8 and fp8 is not True:
            problems.append(
                f"{where}: FP8 needs NVIDIA Ada, Hopper or newer, or AMD MI300; node group '{name}' "
                + (f"has {gpu}, which has no FP8 units" if fp8 is False else
                   "does not say its GPU (gpuModel), so that cannot be checked"))
        if size is None:
            warnings.append(f"{where}: node group '{name}' declares no gpuModel or gpuMemory: GPU-memory fit "
                            f"not checked")
            continue
        fit = estimate(args, gpu or "GPU", size)
        if fit is None:
            warnings.append(f"{where}: GPU-memory fit on '{name}' not checked: {args.model_name} has no readable "
                            f"config.json and no entry in serving_app/model_shapes.py; declare model_parameters")
            continue
        problem, warning = _verdict(fit)
        if problem:
            problems.append(f"{where}: one replica cannot start on node group '{name}': {problem}; "
                            f"{fit.describe()}")
        if warning:
            warnings.append(f"{where} on node group '{name}': {warning}; {fit.describe()}")


def _verdict(fit: FitEstimate) -> tuple[Optional[str], Optional[str]]:
    gib = lambda n: f"{n / 2**30:.1f} GiB"  # noqa: E731
    if fit.load_peak > fit.gpu_bytes:
        return f"loading needs {gib(fit.load_peak)} per GPU, more than its {gib(fit.gpu_bytes)}", None
    if not fit.can_start:
        if fit.kv_available <= 0 or fit.kv_tokens is None:
            return (f"weights + overhead {gib(fit.weights + fit.overhead)} exceed the budget {gib(fit.budget)}",
                    None)
        return (f"the KV cache left ({fit.kv_tokens:,} tokens) cannot hold one sequence of max_model_len "
                f"{fit.max_model_len}", None)
    if fit.kv_tokens is None or fit.needed_tokens is None:
        return None, "KV cache not estimated (no model shapes)"
    if not fit.fits:
        return None, (f"the KV cache holds {fit.kv_tokens // fit.max_model_len} sequences of max_model_len "
                      f"{fit.max_model_len} at once, fewer than the {fit.concurrency} the replica admits: long requests "
                      f"beyond that wait or are preempted (lower batch_size/max_model_len, an FP8 KV cache, more GPUs)")
    if fit.headroom < TIGHT:
        return None, f"fits with {fit.headroom:.0%} headroom ({TIGHT:.0%} or more is safe)"
    return None, None


def check_gpu_fit(stack) -> list[str]:
    return assess(stack)[0]


def gpu_fit_warnings(stack) -> list[str]:
    return assess(stack)[1]
