"""The engine-neutral vocabulary of serve arguments: hardware targets and data types (no engine facts here)."""

from __future__ import annotations

from enum import Enum


class TargetDevice(str, Enum):
    NVIDIA = "NVIDIA"  # CUDA GPUs
    AMD_GPU = "AMD_GPU"  # ROCm GPUs
    INTEL = "INTEL"  # Xeon CPUs
    AMD = "AMD"  # EPYC CPUs
    CPU = "CPU"  # any x86 CPU (vLLM's CPU build: local mode, tests)

    @property
    def is_gpu(self) -> bool:
        return self in (TargetDevice.NVIDIA, TargetDevice.AMD_GPU)


class DataType(str, Enum):
    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    INT8 = "int8"
    INT4 = "int4"
    # FP8 weights (vLLM: an FP8 checkpoint as it is, else a 16-bit one quantized while loading); the layers FP8 does
    # not cover (embeddings, norms, lm_head) keep the checkpoint's own 16-bit type. NVIDIA Ada, Hopper or newer, AMD MI300.
    FP8 = "fp8"


# Spellings that common tools use.
DATA_TYPE_ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float": "float32",
    "sym_int8": "int8",
    "sym_int4": "int4",
    "float8": "fp8",
    "float8_e4m3fn": "fp8",
}
TARGET_ALIASES = {"GPU": "NVIDIA", "CUDA": "NVIDIA", "ROCM": "AMD_GPU", "AMDGPU": "AMD_GPU"}
