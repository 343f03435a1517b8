"""LoRA adapters on vLLM: the serve arg `lora` (typed, importable without vLLM) and a replica's catalog of the model
ids it serves (the base model and its adapters), which resolves a request's `model` to an adapter.

Adapters are declared by id (what clients send as `model`) with a path on the model volume or a hub id, or found in
`dynamic_dir`: a request for model `<id>` where `<dynamic_dir>/<id>/adapter_config.json` exists serves that
adapter, so adapters can be added to the volume without redeploying. Either way vLLM loads an adapter on its first
request, keeps up to `max_cpu_loras` loaded per replica (the least recently used goes first) and mixes up to
`max_loras` of them in one batch. `GET /v1/models` lists the base model and every adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .engines.registry import EngineName

ADAPTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a directory name: no path, no "..", no ":" or "/"
# The engines that serve adapters; the CPU engines' batching loops run plain Hugging Face weights.
LORA_ENGINES = (EngineName.VLLM,)
# vLLM's engine arguments the `lora` arg sets (engine_kwargs may not).
LORA_ENGINE_KWARGS = ("enable_lora", "max_loras", "max_lora_rank", "max_cpu_loras")


class LoRAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapters: dict[str, str] = Field(
        default_factory=dict, description="model id clients send -> adapter directory (or hub id)")
    dynamic_dir: Optional[str] = Field(
        default=None, description="a directory whose subdirectory <id> is served as model <id>, loaded on first use")
    max_loras: int = Field(default=1, ge=1, le=256, description="adapters one batch mixes (vLLM max_loras)")
    max_cpu_loras: Optional[int] = Field(
        default=None, ge=1, description="adapters a replica keeps loaded (vLLM max_cpu_loras; default max_loras)")
    max_lora_rank: int = Field(default=16, ge=1, le=512, description="largest adapter rank (vLLM max_lora_rank)")

    @field_validator("adapters")
    @classmethod
    def _ids(cls, value: dict[str, str]) -> dict[str, str]:
        for adapter_id, source in value.items():
            if not ADAPTER_ID.match(adapter_id):
                raise ValueError(f"{adapter_id!r}: an adapter id is letters, digits, '.', '_' and '-'")
            if not source.strip():
                raise ValueError(f"{adapter_id}: needs a directory or hub id")
        return value

    @model_validator(mode="after")
    def _something(self) -> "LoRAConfig":
        if not self.adapters and self.dynamic_dir is None:
            raise ValueError("adapters: give adapters, dynamic_dir or both")
        if self.dynamic_dir is not None and not self.dynamic_dir.startswith("/"):
            raise ValueError(f"dynamic_dir: {self.dynamic_dir!r} is not an absolute path")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras: {self.max_cpu_loras} is below max_loras {self.max_loras}")
        return self

    def engine_arguments(self) -> dict[str, Any]:
        return {"enable_lora": True, "max_loras": self.max_loras, "max_lora_rank": self.max_lora_rank,
                "max_cpu_loras": self.max_cpu_loras or self.max_loras}


@dataclass(frozen=True)
class Adapter:
    """One adapter as an engine takes it: vLLM's LoRARequest(name, int id, path)."""

    name: str
    id: int  # unique per replica, from 1
    path: str


class ModelCatalog:
    """The model ids one replica serves: its base model's and its adapters'."""

    def __init__(self, base_id: str, config: Optional[LoRAConfig], engine: EngineName):
        self.base_id = base_id
        self.config = config
        self.engine = engine
        self._known: dict[str, Adapter] = {}
        for adapter_id, source in sorted((config.adapters if config else {}).items()):
            self._add(adapter_id, source)

    def _add(self, adapter_id: str, path: str) -> Adapter:
        adapter = self._known[adapter_id] = Adapter(adapter_id, len(self._known) + 1, path)
        return adapter

    def _dynamic(self, adapter_id: str) -> Optional[Path]:
        if self.config is None or self.config.dynamic_dir is None or not ADAPTER_ID.match(adapter_id):
            return None
        path = Path(self.config.dynamic_dir) / adapter_id
        return path if (path / "adapter_config.json").is_file() else None

    def resolve(self, model: Optional[str]) -> Optional[Adapter]:
        """The adapter a request's `model` names; None for the base model (or no model). LookupError: no such id."""
        if model is None or model == self.base_id:
            return None
        if model in self._known:
            return self._known[model]
        path = self._dynamic(model)
        if path is None:
            raise LookupError(self.unknown(model))
        return self._add(model, str(path))

    def ids(self) -> list[str]:
        """Every id a client may send: the base model's, then the adapters' (declared, loaded, on the volume)."""
        ids = dict.fromkeys([self.base_id, *self._known])
        if self.config is not None and self.config.dynamic_dir is not None:
            directory = Path(self.config.dynamic_dir)
            if directory.is_dir():
                ids.update(dict.fromkeys(sorted(p.name for p in directory.iterdir() if self._dynamic(p.name))))
        return list(ids)

    def unknown(self, model: str) -> str:
        message = f"model {model!r} does not exist; this server serves {', '.join(map(repr, self.ids()))}"
        if self.engine not in LORA_ENGINES:
            message += f" (the {self.engine.value} engine serves no LoRA adapters)"
        return message
