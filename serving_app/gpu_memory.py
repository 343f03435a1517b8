"""Will one vLLM replica fit its GPUs? An estimate made at `pulumi preview` from the model's shapes, without torch.

    weights   parameters x bytes per parameter: 2 for 16-bit; FP8 (data_type fp8 or an FP8 checkpoint) 1 for the
              attention/MLP projections and 2 for embeddings, lm_head and norms, as vLLM quantizes them
    overhead  per GPU: 0.5 GiB + the activations of one forward pass of max_num_batched_tokens
              (tokens x (2 x intermediate + 4 x hidden) x 2 bytes / tensor-parallel size)
    KV cache  2 x layers x KV heads x head_dim x bytes (2, or 1 for an FP8 cache) per token
    budget    GPU memory as CUDA reports it x gpu_memory_utilization (vLLM's default 0.92) x tensor-parallel size

The overhead is calibrated against what vLLM 0.25.1 reported at start on an H200 (benchmarks/RESULTS.md keeps the
comparison). How FP8 weights arrive: an FP8 checkpoint loads as it is; a 16-bit checkpoint is quantized while it
loads, one projection at a time (vLLM >= 0.25 creates those weights on the meta device and materializes each just
before quantizing it), so the load-time peak is the FP8 weights plus the largest projection in 16-bit, not the whole
16-bit model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .engines.options import VLLMOptions
from .enums import DataType
from .model_shapes import ModelShape, model_shape

if TYPE_CHECKING:
    from .serve_args import ServeArgs

GiB = 1 << 30
# vLLM's defaults (0.25 and 0.32 alike).
GPU_MEMORY_UTILIZATION = 0.92
FIXED_OVERHEAD = GiB // 2
# CUDA's total is less than nvidia-smi's memory.total: 150,109,880,320 B against 143,771 MiB on an H200.
_CUDA_OF_SMI = 150_109_880_320 / (143_771 << 20)


@dataclass(frozen=True)
class GPUModel:
    name: str
    smi_mib: int  # nvidia-smi / rocm-smi memory.total
    fp8: bool  # FP8 matrix units vLLM's FP8 kernels use: NVIDIA compute capability >= 8.9 (Ada, Hopper, newer), MI300

    @property
    def memory_bytes(self) -> int:
        """What CUDA reports as the card's total (what vLLM's gpu_memory_utilization multiplies)."""
        return int(self.smi_mib * (1 << 20) * _CUDA_OF_SMI)


GPU_MODELS = {gpu.name: gpu for gpu in (
    GPUModel("H200", 143_771, True),
    GPUModel("H100", 81_559, True),  # H100 80GB (SXM and PCIe)
    GPUModel("L40S", 46_068, True),
    GPUModel("L4", 23_034, True),
    GPUModel("A100-80GB", 81_920, False),
    GPUModel("A100-40GB", 40_960, False),
    GPUModel("MI300X", 196_608, True),
    GPUModel("MI250X", 131_072, False),
)}


def vllm_defaults(gpu_name: str, gpu_bytes: int) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) vLLM's OpenAI server picks for this GPU (engine arg_utils)."""
    if gpu_bytes >= 70 * GiB and "a100" not in gpu_name.lower():
        return 1024, 8192
    return 256, 2048


def weight_bytes(shape: ModelShape, fp8: bool, data_type: DataType) -> int:
    if fp8:
        return shape.linear_parameters + 2 * shape.other_parameters
    return (4 if data_type == DataType.FLOAT32 else 2) * shape.parameters


@dataclass(frozen=True)
class FitEstimate:
    """One replica of `tp` GPUs of `gpu_bytes` each. Byte counts are for the whole replica; None: unknown."""

    source: str  # where the shapes came from
    gpu: str
    gpu_bytes: int
    tp: int
    utilization: float
    weights: int
    weights_label: str  # "bfloat16", "fp8 (FP8 checkpoint)", "fp8 (quantized while loading)"
    load_peak: int  # per GPU, while loading
    overhead: int
    kv_bytes_per_token: Optional[int]
    max_model_len: Optional[int]
    concurrency: int
    kv_reserved: Optional[int] = None  # kv_cache_memory_bytes x tp, where set (vLLM then ignores the utilization)

    @property
    def budget(self) -> int:
        return int(self.gpu_bytes * self.tp * self.utilization)

    @property
    def kv_available(self) -> int:
        if self.kv_reserved is not None:
            return self.kv_reserved
        return self.budget - self.weights - self.overhead

    @property
    def kv_tokens(self) -> Optional[int]:
        """Tokens the KV cache holds (vLLM prints it at start: 'GPU KV cache size')."""
        if self.kv_bytes_per_token is None:
            return None
        return max(0, self.kv_available) // self.kv_bytes_per_token

    @property
    def needed_tokens(self) -> Optional[int]:
        return None if self.max_model_len is None else self.max_model_len * self.concurrency

    @property
    def can_start(self) -> bool:
        """vLLM starts: weights and overhead fit, the cache holds one max_model_len sequence, loading fits."""
        if self.load_peak > self.gpu_bytes:
            return False
        if self.kv_reserved is not None:
            return self.weights + self.overhead + self.kv_reserved <= self.gpu_bytes * self.tp
        if self.kv_tokens is None or self.max_model_len is None:
            return self.kv_available > 0
        return self.kv_tokens >= self.max_model_len

    @property
    def fits(self) -> bool:
        """The cache holds every sequence the replica admits at once (concurrency x max_model_len)."""
        return self.can_start and self.needed_tokens is not None and self.kv_tokens >= self.needed_tokens

    @property
    def headroom(self) -> float:
        """Memory left over the full concurrency's needs, as a share of the budget (< 0: short)."""
        kv_needed = (self.needed_tokens or 0) * (self.kv_bytes_per_token or 0)
        return (self.kv_available - kv_needed) / self.budget

    def describe(self) -> str:
        gib = lambda n: f"{n / GiB:.1f} GiB"  # noqa: E731
        parts = [f"{self.tp}x {self.gpu} ({gib(self.gpu_bytes)} each): budget {gib(self.budget)} "
                 f"({self.utilization:g} of {gib(self.gpu_bytes * self.tp)}); weights {gib(self.weights)} "
                 f"({self.weights_label}, {self.source}); overhead {gib(self.overhead)}"]
        if self.kv_bytes_per_token is None:
            parts.append("KV cache not estimated (no shapes: only model_parameters)")
        else:
            parts.append(f"KV cache {gib(max(0, self.kv_available))} = {self.kv_tokens:,} tokens at "
                         f"{self.kv_bytes_per_token // 1024} KiB per token")
            if self.needed_tokens is not None:
                parts.append(f"{self.concurrency} sequences x {self.max_model_len} tokens need "
                             f"{self.needed_tokens:,} tokens")
        return "; ".join(parts)


def estimate(args: "ServeArgs", gpu: str, gpu_bytes: int) -> Optional[FitEstimate]:
    """The fit of one replica of these (vLLM) ServeArgs on GPUs of this model and size; None without a shape or a
    declared parameter count."""
    options: VLLMOptions = args.options
    kwargs = args.engine_kwargs
    tp = args.tensor_parallel_size
    shape = model_shape(args.model_name)
    if shape is not None and shape.quantization is not None and not shape.fp8_checkpoint:
        shape = None  # int4/int8 checkpoints: their bytes per parameter are not modelled here
    default_seqs, default_batched = vllm_defaults(gpu, gpu_bytes)
    batched = kwargs.get("max_num_batched_tokens") or default_batched
    concurrency = min(args.batch_size or default_seqs, args.max_ongoing_requests)
    utilization = options.gpu_memory_utilization or GPU_MEMORY_UTILIZATION
    kv_reserved = options.kv_cache_memory_bytes * tp if options.kv_cache_memory_bytes else None
    checkpoint_fp8 = shape is not None and shape.fp8_checkpoint
    fp8 = args.data_type == DataType.FP8 or checkpoint_fp8
    kv_size = 1 if options.fp8_kv_cache else (4 if args.data_type == DataType.FLOAT32 else 2)
    if shape is None:
        billions = args.model_parameters
        if billions is None:
            return None
        weights = int(billions * 1e9 * (1 if fp8 else 4 if args.data_type == DataType.FLOAT32 else 2))
        return FitEstimate(
            source=f"model_parameters {billions:g}B", gpu=gpu, gpu_bytes=gpu_bytes, tp=tp, utilization=utilization,
            weights=weights, weights_label=_label(args.data_type, fp8, checkpoint_fp8), load_peak=weights // tp,
            overhead=tp * FIXED_OVERHEAD, kv_bytes_per_token=None, max_model_len=args.max_model_len,
            concurrency=concurrency, kv_reserved=kv_reserved)
    weights = weight_bytes(shape, fp8, args.data_type)
    # Quantizing while loading holds one projection in 16-bit next to the FP8 weights.
    load_peak = (weights + (2 * shape.largest_linear if fp8 and not checkpoint_fp8 else 0)) // tp
    activations = batched * (2 * shape.intermediate_size + 4 * shape.hidden_size) * 2
    kv_heads_per_gpu = max(1, shape.num_kv_heads // tp)
    return FitEstimate(
        source=shape.name, gpu=gpu, gpu_bytes=gpu_bytes, tp=tp, utilization=utilization, weights=weights,
        weights_label=_label(args.data_type, fp8, checkpoint_fp8), load_peak=load_peak,
        overhead=tp * FIXED_OVERHEAD + activations,
        kv_bytes_per_token=2 * shape.num_layers * kv_heads_per_gpu * tp * shape.head_dim * kv_size,
        max_model_len=args.max_model_len or shape.max_position_embeddings, concurrency=concurrency,
        kv_reserved=kv_reserved)


def _label(data_type: DataType, fp8: bool, checkpoint_fp8: bool) -> str:
    if checkpoint_fp8:
        return "fp8 (FP8 checkpoint)"
    if fp8:
        return "fp8 (16-bit checkpoint quantized while loading)"
    return data_type.value
