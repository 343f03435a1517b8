"""The serving application's arguments: what a Serve config's `args` (KubeRay's `serveConfigV2`) may carry.

Importable without Ray or any engine, so `infra/` validates the same model at `pulumi preview` and a wrong serve
argument fails there instead of in a pod fifteen minutes later.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .autoscaling import AutoscalingConfig, replica_range
from .engines.options import EngineOptions
from .engines.registry import EngineName, default_engine, spec
from .lora import LORA_ENGINE_KWARGS, LORA_ENGINES, LoRAConfig
from .enums import DATA_TYPE_ALIASES, TARGET_ALIASES, DataType, TargetDevice


# Kept importable from here: most callers speak of serve arguments.
__all__ = ["DataType", "EngineName", "ServeArgs", "TargetDevice", "describe_validation_error", "parse_serve_args"]

# engine_kwargs keys that would silently fight a typed argument.
_TYPED_ENGINE_KWARGS = {
    "model": "model_name",
    "tokenizer": "model_name",
    "served_model_name": "served_model_name",
    "tensor_parallel_size": "gpu_count",
    "dtype": "data_type",
    "max_model_len": "max_model_len",
    "max_num_seqs": "batch_size",
    **{name: "lora" for name in LORA_ENGINE_KWARGS},
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
    model_parameters: Optional[float] = Field(
        default=None, gt=0, description="Parameters in billions (e.g. 70): the preview's GPU-memory fit uses it for a "
        "model whose config.json is not readable there and whose shapes serving_app/model_shapes.py does not know."
    )
    batch_size: Optional[int] = Field(
        default=None, ge=1, le=4096, description="Most sequences batched together (vLLM: max_num_seqs)."
    )
    batch_timeout: float = Field(
        default=0.01, ge=0, le=10, description="CPU engines: seconds a new batch waits for more requests."
    )
    max_new_tokens: int = Field(default=256, ge=1, description="max_tokens for requests that do not set it.")
    temperature: float = Field(default=1.0, ge=0, le=2, description="temperature for requests that do not set it.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra engine arguments.")
    lora: Optional[LoRAConfig] = Field(default=None, description="LoRA adapters served beside the base model "
                                                                 "(vLLM; serving_app.lora).")
    num_replicas: Optional[int] = Field(default=None, ge=1, le=1024, description="Fixed replica count (default 1).")
    autoscaling_config: Optional[AutoscalingConfig] = Field(
        default=None, description="Serve's replica autoscaling, instead of num_replicas (serving_app.autoscaling).")
    max_ongoing_requests: int = Field(
        default=256, ge=1, description="Concurrent requests one replica accepts."
    )
    max_queued_requests: Optional[int] = Field(
        default=None, ge=0,
        description="Requests one replica holds waiting beyond max_ongoing_requests; one more is answered 503 with "
                    "Retry-After at once. Default: half of max_ongoing_requests.",
    )
    retry_after_s: int = Field(default=1, ge=0, le=3600, description="Retry-After (seconds) of a shed request's 503.")
    max_request_bytes: int = Field(
        default=4 * 2**20, ge=1024, description="Largest request body; a larger one is a 413 before it is read."
    )
    max_tokens_limit: Optional[int] = Field(
        default=None, ge=1, description="Most tokens one request may generate; default: what the context leaves."
    )
    request_timeout_s: Optional[float] = Field(
        default=None, gt=0, description="Per-request deadline from arrival: 504, or an error event once streaming."
    )
    access_log_text: bool = Field(
        default=False, description="Put each request's body and generated text in its access log line (off: "
                                   "prompts and completions may be confidential)."
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
        if data.get("num_replicas") is not None and data.get("autoscaling_config") is not None:
            raise ValueError("num_replicas: give num_replicas (a fixed count) or autoscaling_config, not both")
        if "max_concurrent_queries" in data:
            if "max_ongoing_requests" in data:
                raise ValueError("max_concurrent_queries: give max_ongoing_requests or its old name, not both")
            data["max_ongoing_requests"] = data.pop("max_concurrent_queries")
        if isinstance(data.get("data_type"), str):
            lowered = data["data_type"].lower()
            data["data_type"] = DATA_TYPE_ALIASES.get(lowered, lowered)
        if isinstance(data.get("target_device"), str):
            upper = data["target_device"].upper()
            data["target_device"] = TARGET_ALIASES.get(upper, upper)
        if isinstance(data.get("engine"), str):
            data["engine"] = data["engine"].lower()
        return data

    _options: Optional[EngineOptions] = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve_defaults(self) -> "ServeArgs":
        if self.engine is None:
            self.engine = default_engine(self.target_device)
        engine = spec(self.engine)
        if self.target_device not in engine.targets:
            allowed = ", ".join(sorted(t.value for t in engine.targets))
            raise ValueError(
                f"engine: engine {self.engine.value!r} cannot run on target_device {self.target_device.value!r} "
                f"(it runs on: {allowed})"
            )
        if self.data_type is None:
            self.data_type = engine.data_types[0]
        elif self.data_type not in engine.data_types:
            raise ValueError(
                f"data_type: {self.data_type.value!r} is not supported by engine {self.engine.value!r} "
                f"(supported: {', '.join(t.value for t in engine.data_types)})"
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
        self._options = _engine_options(engine.options, self.engine, self.engine_kwargs)
        for name, amount in self.resources.items():
            if name in ("CPU", "GPU", "memory"):
                raise ValueError(f"resources.{name}: use num_cpus / gpu_count, not a custom resource")
            if amount <= 0:
                raise ValueError(f"resources.{name}: must be positive, got {amount}")
        if self.served_model_name is None:
            self.served_model_name = self.model_name
        if self.lora is not None and self.engine not in LORA_ENGINES:
            raise ValueError(f"lora: the {self.engine.value} engine serves no LoRA adapters (only "
                             f"{', '.join(e.value for e in LORA_ENGINES)} does)")
        if self.lora is not None and self.served_model_name in self.lora.adapters:
            raise ValueError(f"lora.adapters.{self.served_model_name}: is the base model's own id")
        if self.num_replicas is None and self.autoscaling_config is None:
            self.num_replicas = 1
        if self.max_tokens_limit is not None and self.max_new_tokens > self.max_tokens_limit:
            raise ValueError(f"max_new_tokens: {self.max_new_tokens} is above max_tokens_limit {self.max_tokens_limit}")
        return self

    @property
    def options(self) -> EngineOptions:
        """engine_kwargs as the engine's typed options model (registry entry `options`)."""
        assert self._options is not None
        return self._options

    @property
    def replica_range(self) -> tuple[int, int]:
        """(fewest, most) replicas: autoscaling_config's min..max, else num_replicas for both."""
        assert self.autoscaling_config is not None or self.num_replicas is not None
        return replica_range(self.autoscaling_config, self.num_replicas or 1)

    @property
    def tensor_parallel_size(self) -> int:
        return max(1, self.gpu_count or 0)

    @property
    def queue_limit(self) -> int:
        """max_queued_requests, resolved. A full replica finishes about max_ongoing_requests requests per request
        latency, so one queued behind half as many waits about half a latency: admitted requests stay near 1.5x an
        unloaded replica's latency, and the engine never idles while the queue holds work. Resolved here, not in the
        field, so rendered serve configs carry only what a stack sets."""
        if self.max_queued_requests is not None:
            return self.max_queued_requests
        return max(1, self.max_ongoing_requests // 2)


def _engine_options(model: type[EngineOptions], engine: EngineName, kwargs: dict[str, Any]) -> EngineOptions:
    try:
        return model.model_validate(kwargs)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            fields = model.model_fields
            described = "; ".join(f"{name}: {fields[name].description}" for name in sorted(fields))
            message = f"not understood by the {engine.value} engine (it takes: {described})"
        elif not where and ": " in message:
            where, message = message.split(": ", 1)
        if problem["type"] == "literal_error":
            message = f"{problem['input']!r} is not one of {', '.join(problem['ctx']['expected'].replace(chr(39), '').split(' or '))}"
        raise ValueError(f"engine_kwargs.{where}: {message}") from None


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
