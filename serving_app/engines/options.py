"""Each engine's typed `engine_kwargs`: schema, defaults and the preview-time check in one model per engine.

Importable without any engine library (infra/ validates with these at `pulumi preview`). Field paths in errors
come out as `engine_kwargs.<field>`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .vllm_arg_names import VLLM_ENGINE_ARG_NAMES

# ONNX int8 kernel targets (serving_app.convert --quantization). auto: the converting machine's best; a startup
# conversion runs on the node that serves it.
QUANTIZATION_TARGETS = ("auto", "avx2", "avx512", "avx512_vnni", "arm64")
# vLLM's KV cache types that we offer (its others are for specific accelerators).
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")


class EngineOptions(BaseModel):
    """Base of every engine's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class BatchingOptions(EngineOptions):
    """What our own batching loop (the CPU engines) takes."""

    num_threads: Optional[int] = Field(default=None, ge=1, description="compute threads (default: the replica's num_cpus)")
    max_prefill_tokens: int = Field(default=4096, ge=1, description="padded tokens per prefill forward (default 4096)")

    def threads(self, num_cpus: float) -> int:
        return self.num_threads or max(1, int(num_cpus))


class BigDLOptions(BatchingOptions):
    low_bit_cache_dir: Optional[str] = Field(
        default=None, description="where converted models are cached (default: <model>/.bigdl-cache, else ~/.cache)")
    trust_remote_code: bool = Field(default=False, description="run the model repository's own modelling code (default false)")


class OnnxRuntimeOptions(BatchingOptions):
    convert: bool = Field(
        default=False, description="true: convert a Hugging Face model at startup instead of refusing it (default false)")
    onnx_cache_dir: Optional[str] = Field(
        default=None, description="where startup conversions are cached (default: <model>/.onnx-cache, else ~/.cache)")
    quantization: Literal[QUANTIZATION_TARGETS] = Field(  # type: ignore[valid-type]
        default="auto", description="int8 kernel target of a startup conversion: auto (default: the node's CPU), avx2, "
                                    "avx512, avx512_vnni, arm64")


class VLLMOptions(EngineOptions):
    """vLLM's engine arguments: the ones we act on are typed; any other must be one of vLLM's own argument names
    (the list is checked against the installed vLLM by a test), so a typo fails at preview too."""

    model_config = ConfigDict(extra="allow")

    distributed_executor_backend: Literal["ray", "mp"] = Field(
        default="ray", description="tensor-parallel workers: Ray actors in the replica's placement group, or mp "
                                   "processes that are the replica's children")
    gpu_memory_utilization: Optional[float] = Field(default=None, gt=0, le=1)
    kv_cache_memory_bytes: Optional[int] = Field(default=None, ge=1)
    kv_cache_dtype: Literal[KV_CACHE_DTYPES] = Field(  # type: ignore[valid-type]
        default="auto", description="KV cache data type: auto (the model's) or an FP8 one (fp8 = fp8_e4m3; half "
                                    "the bytes per token, NVIDIA Ada, Hopper or newer / AMD MI300)")
    disable_log_stats: bool = True

    @model_validator(mode="after")
    def _known_names(self) -> "VLLMOptions":
        unknown = sorted(set(self.model_extra or {}) - VLLM_ENGINE_ARG_NAMES)
        if unknown:
            raise ValueError(f"{unknown[0]}: not an argument of vLLM's engine (AsyncEngineArgs)")
        return self

    @property
    def fp8_kv_cache(self) -> bool:
        return self.kv_cache_dtype != "auto"

    def uses_ray_workers(self, tensor_parallel_size: int) -> bool:
        """vLLM's TP workers run as Ray actors in bundles of the replica's placement group."""
        return tensor_parallel_size > 1 and self.distributed_executor_backend == "ray"

    def engine_arguments(self) -> dict[str, Any]:
        """What goes to AsyncEngineArgs verbatim (set fields only, so vLLM's own defaults stay vLLM's)."""
        return self.model_dump(exclude_unset=True)
