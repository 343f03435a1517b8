"""Shared pieces of the infra tests: the real stack files as Pulumi config, fake secrets, recording mocks."""

from __future__ import annotations

import copy
import hashlib
from typing import Any, Callable, Optional

import pulumi

from infra.config import PROJECT, REPO_ROOT, StackConfig, parse_stack_config, read_stack_file, to_pulumi_config
from infra.render import Recorded

STACKS = ("gpu", "cpu")
FAKE_HF_TOKEN = "hf_FAKEtokenForInfraTests_7c1e9a"
FAKE_REGISTRY_PASSWORD = "FAKE-registry-Passw0rd-5d2f"
SECRETS = {f"{PROJECT}:hfToken": FAKE_HF_TOKEN, f"{PROJECT}:registryPassword": FAKE_REGISTRY_PASSWORD}
CRD_DIR = REPO_ROOT.parent / "shared" / "kuberay-crds" / "v1.7.0"


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


def pulumi_config(document: dict[str, Any], secrets: bool = True) -> dict[str, str]:
    config = to_pulumi_config(document)
    if secrets:
        config.update(SECRETS)
    return config


class Mocks(pulumi.runtime.Mocks):
    """Records every resource with its inputs; a pushed image gets a digest derived from its name."""

    def __init__(self) -> None:
        self.resources: list[Recorded] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[Optional[str], dict]:
        self.resources.append(Recorded(args.typ, args.name, args.inputs))
        outputs = dict(args.inputs)
        if args.typ == "docker:index/image:Image":
            repository = args.inputs["imageName"].rsplit(":", 1)[0]
            outputs["repoDigest"] = f"{repository}@sha256:{hashlib.sha256(repository.encode()).hexdigest()}"
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, Optional[list]]:
        return {}, None

    def of_type(self, type_: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> Recorded:
        found = self.of_type(type_)
        assert len(found) == 1, f"expected one {type_}, got {[r.name for r in found]}"
        return found[0]
