"""Shared pieces of the infra tests: the real stack files as Pulumi config, fake secrets (the recording mocks are
infra.mocks, shared with render)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
from pulumi.runtime import rpc

from infra.checks import run_checks
from infra.config import (
    KUBERAY_CHART_VERSION, PROJECT, StackConfig, StackConfigError, parse_stack_config, read_stack_file,
    to_pulumi_config,
)

STACKS = ("gpu", "cpu")
FAKE_HF_TOKEN = "hf_FAKEtokenForInfraTests_7c1e9a"
FAKE_REGISTRY_PASSWORD = "FAKE-registry-Passw0rd-5d2f"
SECRET = "kubernetes:core/v1:Secret"
FAKE_API_KEYS = "sk-FAKEoldKeyForInfraTests-3a9c,sk-FAKEnewKeyForInfraTests-81bd"
SECRETS = {f"{PROJECT}:hfToken": FAKE_HF_TOKEN, f"{PROJECT}:registryPassword": FAKE_REGISTRY_PASSWORD,
           f"{PROJECT}:apiKeys": FAKE_API_KEYS}
# The CRDs of the operator version the stacks install.
CRD_DIR = Path(__file__).parent / "fixtures" / "kuberay-crds" / f"v{KUBERAY_CHART_VERSION}"


def stack_document(stack: str) -> dict[str, Any]:
    return copy.deepcopy(read_stack_file(stack))


def config_values(document: dict[str, Any]) -> dict[str, Any]:
    """The `llm-serving:*` values of a stack document, by short key (edit these in failing-config tests)."""
    return {k.split(":", 1)[1]: v for k, v in document["config"].items() if k.startswith(f"{PROJECT}:")}


def with_values(stack: str, edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    document = stack_document(stack)
    values = config_values(document)
    edit(values)
    document["config"] = {f"{PROJECT}:{k}": v for k, v in values.items()}
    return document


def parse_document(document: dict[str, Any]) -> StackConfig:
    return parse_stack_config(to_pulumi_config(document))


def problems_of(stack: str, edit: Callable[[dict[str, Any]], None]) -> str:
    """Every preview-check problem of the stack file with `edit` applied, one a line."""
    return "\n".join(run_checks(parse_document(with_values(stack, edit))))


def config_error(stack: str, edit: Callable[[dict[str, Any]], None]) -> str:
    """The validation message of the stack file with `edit` applied (which must fail)."""
    with pytest.raises(StackConfigError) as error:
        parse_document(with_values(stack, edit))
    return str(error.value)


def pulumi_config(document: dict[str, Any], secrets: bool = True) -> dict[str, str]:
    config = to_pulumi_config(document)
    if secrets:
        config.update(SECRETS)
    return config


def plain(value):
    """Inputs with Pulumi-secret wrappers removed (to search them)."""
    if rpc.is_rpc_secret(value):
        return plain(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
