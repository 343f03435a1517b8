"""The engine registry is the one home of per-engine facts: what derives from it is consistent, and its vLLM
argument list matches the vLLM that the main environment installs. No Ray, no model."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
from pydantic import ValidationError

from serving_app.engines.options import EngineOptions
from serving_app.engines.registry import REGISTRY, EngineName, default_engine, image_engine, spec
from serving_app.engines.vllm_arg_names import VLLM_ENGINE_ARG_NAMES
from serving_app.enums import TargetDevice
from serving_app.serve_args import parse_serve_args


def test_every_target_device_has_exactly_one_default_engine_that_can_run_there():
    for target in TargetDevice:
        engine = default_engine(target)
        assert target in spec(engine).targets


def test_every_cluster_hardware_image_carries_one_engine():
    for hardware in (TargetDevice.NVIDIA, TargetDevice.AMD_GPU, TargetDevice.INTEL, TargetDevice.AMD):
        carriers = [name for name, entry in REGISTRY.items() if hardware in entry.images]
        assert len(carriers) == 1, f"{hardware}: {carriers}"
        assert image_engine(hardware) == carriers[0]
        assert hardware in spec(carriers[0]).targets
    assert image_engine(TargetDevice.CPU) is None  # vLLM's CPU build is for local mode and tests only


@pytest.mark.parametrize("name", list(EngineName))
def test_each_engine_defaults_to_its_first_data_type_and_forbids_unknown_options(name: EngineName):
    entry = spec(name)
    target = sorted(entry.targets, key=lambda t: t.value)[0]
    args = parse_serve_args({"model_name": "m", "engine": name.value, "target_device": target.value})
    assert args.data_type == entry.data_types[0]
    assert isinstance(args.options, entry.options) and issubclass(entry.options, EngineOptions)
    with pytest.raises(ValidationError):
        entry.options.model_validate({"surely_not_an_option": 1})


def test_engine_class_paths_name_a_module_of_this_package():
    for entry in REGISTRY.values():
        module, _, cls = entry.engine_class.partition(":")
        assert module.startswith("serving_app.engines.") and cls
        assert importlib.util.find_spec(module) is not None, entry.engine_class


@pytest.mark.vllm
def test_vllm_argument_names_match_the_installed_vllm():
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import AsyncEngineArgs

    installed = {field.name for field in dataclasses.fields(AsyncEngineArgs)}
    assert VLLM_ENGINE_ARG_NAMES == installed, (
        f"missing here: {sorted(installed - VLLM_ENGINE_ARG_NAMES)}; gone from vLLM: "
        f"{sorted(VLLM_ENGINE_ARG_NAMES - installed)}")


def test_a_vllm_engine_argument_typo_fails_with_its_path():
    with pytest.raises(ValueError, match=r"args.engine_kwargs.gpu_memory_utilisation: not an argument of vLLM"):
        parse_serve_args({"model_name": "m", "engine_kwargs": {"gpu_memory_utilisation": 0.9}})
    args = parse_serve_args({"model_name": "m", "engine_kwargs": {"load_format": "dummy"}})
    assert args.options.engine_arguments() == {"load_format": "dummy"}
