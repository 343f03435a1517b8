"""The serving application's arguments: what a Serve config's `args` (KubeRay's `serveConfigV2`) may carry.

Importable without Ray or any engine, so `infra/` validates the same model at `pulumi preview` and a wrong serve
argument fails there instead of in a pod fifteen minutes later.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class TargetDevice(str, Enum):
    NVIDIA = "NVIDIA"  # CUDA GPUs, vLLM
    AMD_GPU = "AMD_GPU"  # ROCm GPUs, vLLM-ROCm
    INTEL = "INTEL"  # Xeon CPUs, BigDL-LLM
    AMD = "AMD"  # EPYC CPUs, ONNX Runtime
    CPU = "CPU"  # any x86 CPU, vLLM's CPU build (local mode, tests)

    @property
    def is_gpu(self) -> bool:
        return self in (TargetDevice.NVIDIA, TargetDevice.AMD_GPU)


class EngineName(str, Enum):
    VLLM = "vllm"
    BIGDL = "bigdl"
    ONNXRUNTIME = "onnxruntime"


class DataType(str, Enum):
    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    INT8 = "int8"
    INT4 = "int4"


DEFAULT_ENGINE = {
    TargetDevice.NVIDIA: EngineName.VLLM,
    TargetDevice.AMD_GPU: EngineName.VLLM,
    TargetDevice.CPU: EngineName.VLLM,
    TargetDevice.INTEL: EngineName.BIGDL,
    TargetDevice.AMD: EngineName.ONNXRUNTIME,
}

# Where each engine can run; ONNX Runtime's CPU provider runs on any x86 CPU.
ENGINE_TARGETS = {
    EngineName.VLLM: {TargetDevice.NVIDIA, TargetDevice.AMD_GPU, TargetDevice.CPU},
    EngineName.BIGDL: {TargetDevice.INTEL, TargetDevice.CPU},
    EngineName.ONNXRUNTIME: {TargetDevice.AMD, TargetDevice.INTEL, TargetDevice.CPU},
}

# The first entry is the engine's default.
ENGINE_DATA_TYPES = {
    EngineName.VLLM: [DataType.AUTO, DataType.BFLOAT16, DataType.FLOAT16, DataType.FLOAT32],
    EngineName.BIGDL: [DataType.INT8, DataType.INT4],
    EngineName.ONNXRUNTIME: [DataType.INT8, DataType.FLOAT32],
}

# Spellings the reference scripts and common tools use.
_DATA_TYPE_ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float": "float32",
    "sym_int8": "int8",
    "sym_int4": "int4",
}
_TARGET_ALIASES = {"GPU": "NVIDIA", "CUDA": "NVIDIA", "ROCM": "AMD_GPU", "AMDGPU": "AMD_GPU"}

# ONNX int8 kernel targets (serving_app.convert --quantization). auto: the converting machine's best; a startup
# conversion runs on the node that serves it.
QUANTIZATION_TARGETS = ("auto", "avx2", "avx512", "avx512_vnni", "arm64")

# The CPU engines' engine_kwargs, known here so a typo fails at `pulumi preview`. vLLM's are too many to mirror:
# vLLM checks them when the replica starts.
_BATCHING_ENGINE_KWARGS = {
    "num_threads": "compute threads (default: the replica's num_cpus)",
    "max_prefill_tokens": "padded tokens per prefill forward (default 4096)",
}
ENGINE_KWARGS: dict[EngineName, dict[str, str]] = {
    EngineName.BIGDL: {
        **_BATCHING_ENGINE_KWARGS,
        "low_bit_cache_dir": "where converted models are cached (default: <model>/.bigdl-cache, else ~/.cache)",
        "trust_remote_code": "run the model repository's own modelling code (default false)",
    },
    EngineName.ONNXRUNTIME: {
        **_BATCHING_ENGINE_KWARGS,
        "convert": "true: convert a Hugging Face model at startup instead of refusing it (default false)",
        "onnx_cache_dir": "where startup conversions are cached (default: <model>/.onnx-cache, else ~/.cache)",
        "quantization": "int8 kernel target of a startup conversion: auto (default: the node's CPU), avx2, avx512, "
                        "avx512_vnni, arm64",
    },
}

# engine_kwargs keys that would silently fight a typed argument.
_TYPED_ENGINE_KWARGS = {
    "model": "model_name",
    "tokenizer": "model_name",
    "served_model_name": "served_model_name",
    "tensor_parallel_size": "gpu_count",
    "dtype": "data_type",
    "max_model_len": "max_model_len",
    "max_num_seqs": "batch_size",
}


class ServeArgs(BaseModel):
    """Validated `args` of `serving_app:typed_app_builder`."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False, populate_by_name=True)

    model_name: str = Field(min_length=1, description="Local path (e.g. /models/llama) or hub id.")
    served_model_name: Optional[str] = Field(
        default=None, min_length=1, description="The id clients pass as `model`; defaults to model_name."
    )
    engine: Optional[EngineName] = Field(default=None, description="Defaults from target_device.")
    target_device: TargetDevice = TargetDevice.NVIDIA
    data_type: Optional[DataType] = Field(default=None, description="Defaults to the engine's first data type.")
    gpu_count: Optional[int] = Field(
        default=None, ge=0, le=64, description="GPUs per replica = tensor parallel size; 0 on CPU targets."
    )
    max_model_len: Optional[int] = Field(default=None, ge=16, description="Context length; engine default if unset.")
    batch_size: Optional[int] = Field(
        default=None, ge=1, le=4096, description="Most sequences batched together (vLLM: max_num_seqs)."
    )
    batch_timeout: float = Field(
        default=0.01, ge=0, le=10, description="CPU engines: seconds a new batch waits for more requests."
    )
    max_new_tokens: int = Field(default=256, ge=1, description="max_tokens for requests that do not set it.")
    temperature: float = Field(default=1.0, ge=0, le=2, description="temperature for requests that do not set it.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra engine arguments.")
    num_replicas: int = Field(default=1, ge=1, le=1024)
    max_ongoing_requests: int = Field(
        default=256, ge=1, description="Concurrent requests one replica accepts."
    )
    num_cpus: float = Field(default=1, gt=0, description="CPUs reserved per replica.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources per replica, e.g. {amd_cpu: 1}."
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_and_refused(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "hf_token" in data:
            raise ValueError(
                "hf_token: not accepted in serve args, because tokens must never sit in a serve config. "
                "Set the HF_TOKEN environment variable instead (the Pulumi program injects it from a Kubernetes Secret)."
            )
        if "max_concurrent_queries" in data:
            if "max_ongoing_requests" in data:
                raise ValueError("max_concurrent_queries: give max_ongoing_requests or its old name, not both")
            data["max_ongoing_requests"] = data.pop("max_concurrent_queries")
        if isinstance(data.get("data_type"), str):
            lowered = data["data_type"].lower()
            data["data_type"] = _DATA_TYPE_ALIASES.get(lowered, lowered)
        if isinstance(data.get("target_device"), str):
            upper = data["target_device"].upper()
            data["target_device"] = _TARGET_ALIASES.get(upper, upper)
        if isinstance(data.get("engine"), str):
            data["engine"] = data["engine"].lower()
        return data

    @model_validator(mode="after")
    def _resolve_defaults(self) -> "ServeArgs":
        if self.engine is None:
            self.engine = DEFAULT_ENGINE[self.target_device]
        if self.target_device not in ENGINE_TARGETS[self.engine]:
            allowed = ", ".join(sorted(t.value for t in ENGINE_TARGETS[self.engine]))
            raise ValueError(
                f"engine: engine {self.engine.value!r} cannot run on target_device {self.target_device.value!r} "
                f"(it runs on: {allowed})"
            )
        allowed_types = ENGINE_DATA_TYPES[self.engine]
        if self.data_type is None:
            self.data_type = allowed_types[0]
        elif self.data_type not in allowed_types:
            raise ValueError(
                f"data_type: {self.data_type.value!r} is not supported by engine {self.engine.value!r} "
                f"(supported: {', '.join(t.value for t in allowed_types)})"
            )
        if self.gpu_count is None:
            self.gpu_count = 1 if self.target_device.is_gpu else 0
        if self.target_device.is_gpu and self.gpu_count < 1:
            raise ValueError(f"gpu_count: must be at least 1 on target_device {self.target_device.value!r}")
        if not self.target_device.is_gpu and self.gpu_count != 0:
            raise ValueError(f"gpu_count: must be 0 on CPU target_device {self.target_device.value!r}")
        for key in self.engine_kwargs:
            if key in _TYPED_ENGINE_KWARGS:
                raise ValueError(f"engine_kwargs.{key}: set by the typed argument {_TYPED_ENGINE_KWARGS[key]!r}")
            if "token" in key.lower() and "tokenizer" not in key.lower() and not key.endswith("_tokens"):
                raise ValueError(f"engine_kwargs.{key}: tokens must come from the HF_TOKEN environment variable")
            known = ENGINE_KWARGS.get(self.engine)
            if known is not None and key not in known:
                described = "; ".join(f"{name}: {text}" for name, text in sorted(known.items()))
                raise ValueError(f"engine_kwargs.{key}: not understood by the {self.engine.value} engine "
                                 f"(it takes: {described})")
        quantization = self.engine_kwargs.get("quantization")
        if quantization is not None and quantization not in QUANTIZATION_TARGETS:
            raise ValueError(f"engine_kwargs.quantization: {quantization!r} is not one of "
                             f"{', '.join(QUANTIZATION_TARGETS)}")
        for name, amount in self.resources.items():
            if name in ("CPU", "GPU", "memory"):
                raise ValueError(f"resources.{name}: use num_cpus / gpu_count, not a custom resource")
            if amount <= 0:
                raise ValueError(f"resources.{name}: must be positive, got {amount}")
        if self.served_model_name is None:
            self.served_model_name = self.model_name
        return self

    @property
    def tensor_parallel_size(self) -> int:
        return max(1, self.gpu_count or 0)

    @property
    def tensor_parallel_executor(self) -> str:
        """vLLM's executor across GPUs: Ray workers in the replica's placement group unless engine_kwargs say "mp"."""
        return str(self.engine_kwargs.get("distributed_executor_backend", "ray"))

    def replica_demand(self) -> dict[str, float]:
        """Ray resources one replica reserves (its engine's GPUs included)."""
        demand: dict[str, float] = {"CPU": self.num_cpus}
        if self.gpu_count:
            demand["GPU"] = float(self.gpu_count)
        demand.update(self.resources)
        return demand


# Model-level checks span fields, so pydantic gives them no location: they lead their message with the field.
_LEADING_FIELD = re.compile(r"^([A-Za-z_][\w.\-]*): ")


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem, each led by its field path (e.g. `applications[0].args.gpu_count`)."""
    lines = []
    for problem in error.errors():
        parts = list(problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        leading = _LEADING_FIELD.match(message)
        if leading and problem["type"] == "value_error":
            parts += leading.group(1).split(".")
            message = message[leading.end():]
        path = prefix
        for part in parts:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        lines.append(f"{path or '(root)'}: {message}")
    return "\n".join(lines)


def parse_serve_args(raw: dict[str, Any], where: str = "args") -> ServeArgs:
    """Validate raw args, raising ValueError whose message names every wrong field under `where`."""
    try:
        return ServeArgs.model_validate(raw)
    except ValidationError as error:
        raise ValueError(f"invalid serve arguments:\n{describe_validation_error(error, where)}") from None
