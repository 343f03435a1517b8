"""The stack configuration: everything a user changes lives in `Pulumi.<stack>.yaml` and is validated here, as
`StackConfig` (its sections are infra/stack_sections.py), read the way Pulumi hands config to the program.

Importable without Pulumi (render, local mode and tests use it). Keys are camelCase as written in the stack files;
a serve application's `args` are the serving app's own `ServeArgs` (snake_case, copied verbatim into serveConfigV2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml
from pydantic import Field, ValidationError, model_validator

from serving_app.enums import TargetDevice
from serving_app.serve_args import describe_validation_error

from .stack_sections import (
    Autoscaler, CLUSTER_HARDWARE, DNS_LABEL, Dashboard, ImageSpec, KubeRay, KubeRayOperatorOptions, ModelStorage,
    Monitoring, NetworkPolicyOptions, NodeGroup, RayServiceOptions, Registry, Serve, StrictModel, WorkerGroup,
)

PROJECT = "llm-serving"
REPO_ROOT = Path(__file__).resolve().parents[1]

# Read by the program as Pulumi secrets (infra/program.py), never into the plain models.
SECRET_KEYS = ("hfToken", "registryPassword", "apiKeys")

KUBERAY_CHART = "kuberay-operator"
KUBERAY_CHART_VERSION = "1.7.0"  # the RayService (infra/manifests.py) is written and tested against this CRD schema
KUBERAY_REPO = "https://ray-project.github.io/kuberay-helm/"


class StackConfigError(ValueError):
    """A stack file that cannot describe a cluster; the message names each config key path."""


class StackConfig(StrictModel):
    namespace: str = Field(default="llm-serving", pattern=DNS_LABEL)
    create_namespace: bool = True
    ray_version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    python_version: str = Field(pattern=r"^3\.\d+$")
    kuberay: KubeRay = Field(default_factory=KubeRay)
    registry: Optional[Registry] = None
    images: dict[TargetDevice, ImageSpec]
    model_storage: Optional[ModelStorage] = None
    head_group: NodeGroup
    worker_groups: list[WorkerGroup] = Field(default_factory=list)
    serve: Serve
    dashboard: Dashboard = Field(default_factory=Dashboard)
    network_policy: NetworkPolicyOptions = Field(default_factory=NetworkPolicyOptions)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    ray_service: RayServiceOptions = Field(default_factory=RayServiceOptions)
    autoscaler: Autoscaler = Field(default_factory=Autoscaler)

    @model_validator(mode="after")
    def _unique_group_names(self) -> "StackConfig":
        names = [group.name for group in self.worker_groups]
        duplicates = sorted({name for name in names if names.count(name) > 1} | ({"head"} & set(names)))
        if duplicates:
            raise ValueError(f"worker group names must be unique and not 'head': {duplicates}")
        return self

    def node_groups(self) -> list[tuple[str, NodeGroup, int]]:
        """(name, group, most pods: maxReplicas) of every group that deploys, head first."""
        groups: list[tuple[str, NodeGroup, int]] = [("head", self.head_group, 1)]
        groups += [(g.name, g, g.size_range[1]) for g in self.worker_groups if g.enabled]
        return groups

    def image_tag(self) -> str:
        if self.registry is not None and self.registry.tag:
            return self.registry.tag
        return f"ray{self.ray_version}-py{self.python_version}"

    def needed_hardware(self) -> list[TargetDevice]:
        """Hardware of the deployed groups, in a stable order: each needs one image."""
        present = {group.hardware for _, group, _ in self.node_groups()}
        return [hardware for hardware in CLUSTER_HARDWARE if hardware in present]


OPERATOR_KEY = "operator"


class OperatorStackConfig(StrictModel):
    """A stack that installs only the cluster's KubeRay operator (Pulumi.kuberay.yaml): one per cluster, which the
    serving stacks name in kuberay.stack."""

    operator: KubeRayOperatorOptions


# ---- loading -------------------------------------------------------------------------------------------------


def _from_pulumi_value(value: Any) -> Any:
    """Pulumi hands structured config to programs as JSON text and scalars as plain text."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _project_values(config: Mapping[str, Any], project: str, secret_keys: Iterable[str]) -> dict[str, Any]:
    """The project's plain keys of a Pulumi config map (`project:key` -> value), structured values parsed; other
    namespaces are ignored. `secret_keys`: the keys Pulumi marks secret. The CLI hands the program their values
    decrypted and names them in PULUMI_CONFIG_SECRET_KEYS (a structured value is listed whole when any part of it is
    secret); a stack file read directly shows them as {secure: ...}."""
    prefix = f"{project}:"
    secret = set(secret_keys)
    raw: dict[str, Any] = {}
    for full_key, value in config.items():
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix):]
        if key in SECRET_KEYS:
            continue
        value = _from_pulumi_value(value)
        if full_key in secret or (isinstance(value, dict) and set(value) == {"secure"}):
            # Everything else ends up in plain manifests (the RayService, Services): it would not stay secret.
            raise StackConfigError(
                f"{full_key}: only {', '.join(SECRET_KEYS)} may be secret config; this value goes into plain "
                f"manifests: set it without --secret (pulumi config rm {full_key}, then pulumi config set "
                f"[--path] {full_key} ...)")
        raw[key] = value
    return raw


def _validate(model: type[StrictModel], raw: dict[str, Any], project: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        prefix = f"{project}:"
        lines = describe_validation_error(error).splitlines()
        body = "\n".join(f"  {prefix}{line}" if not line.startswith("(root)") else f"  {project}: {line[8:]}"
                         for line in lines)
        raise StackConfigError(f"invalid stack configuration:\n{body}") from None


def is_operator_stack(config: Mapping[str, Any], project: str = PROJECT) -> bool:
    return f"{project}:{OPERATOR_KEY}" in config


def parse_stack_config(config: Mapping[str, Any], project: str = PROJECT,
                       secret_keys: Iterable[str] = ()) -> StackConfig:
    """A serving stack's validated config (see _project_values for what Pulumi hands over)."""
    if is_operator_stack(config, project):
        raise StackConfigError(f"{project}:{OPERATOR_KEY}: this stack installs the KubeRay operator only "
                               "(OperatorStackConfig); a serving stack names that stack in kuberay.stack")
    return _validate(StackConfig, _project_values(config, project, secret_keys), project)


def parse_operator_stack_config(config: Mapping[str, Any], project: str = PROJECT,
                                secret_keys: Iterable[str] = ()) -> OperatorStackConfig:
    return _validate(OperatorStackConfig, _project_values(config, project, secret_keys), project)


def to_pulumi_config(stack_yaml: Mapping[str, Any]) -> dict[str, str]:
    """The config map Pulumi would give the program for this stack file: objects as JSON, scalars as text."""
    result: dict[str, str] = {}
    for key, value in (stack_yaml.get("config") or {}).items():
        if isinstance(value, (dict, list)):
            result[key] = json.dumps(value)
        elif isinstance(value, bool):
            result[key] = "true" if value else "false"
        else:
            result[key] = str(value)
    return result


def read_stack_file(stack: str, root: Path = REPO_ROOT) -> dict[str, Any]:
    path = root / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise StackConfigError(f"no stack file {path}")
    return yaml.safe_load(path.read_text()) or {}


def load_stack(stack: str, root: Path = REPO_ROOT) -> StackConfig:
    """The typed config of `Pulumi.<stack>.yaml`, read the way Pulumi hands it to the program (secrets left out)."""
    return parse_stack_config(to_pulumi_config(read_stack_file(stack, root)))
