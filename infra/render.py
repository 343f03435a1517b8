"""Offline render: run the real program against recording mocks and write what it would apply, one YAML document
per resource, without a cluster or the Pulumi CLI (review, GitOps).

Secret config is replaced by placeholders before the program runs and every Pulumi-secret value is redacted on
the way out, so no secret value can reach the files. Images are not built: pods reference the tag that
`pulumi up` would push (it pins the digest).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pulumi.runtime import rpc

from .config import PROJECT, REPO_ROOT, SECRET_KEYS, read_stack_file, to_pulumi_config
from .mocks import Recorded, RecordingMocks, run_with_mocks
from .program import main

REDACTED = "REDACTED (pulumi secret config; written by pulumi up only)"
CHART_TYPE = "kubernetes:helm.sh/v4:Chart"


def redact(value: Any) -> Any:
    """Every Pulumi-secret value replaced (a secret map keeps its keys); integral numbers back to ints (the
    engine protocol carries all numbers as doubles)."""
    if rpc.is_rpc_secret(value):
        inner = rpc.unwrap_rpc_secret(value)
        return {key: REDACTED for key in inner} if isinstance(inner, dict) else REDACTED
    if isinstance(value, dict):
        return {k: redact(value[k]) for k in sorted(value)}  # stable files for GitOps diffs
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


_FIRST_KEYS = ("apiVersion", "kind", "metadata")


def _ordered(document: dict[str, Any]) -> dict[str, Any]:
    head = {key: document[key] for key in _FIRST_KEYS if key in document}
    return {**head, **{k: v for k, v in document.items() if k not in head and v is not None}}


def _helm_documents(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The operator's chart as Flux objects: the chart cannot be templated offline, but it can be named. Flux, like
    the program, installs and upgrades the chart's CRDs with it."""
    namespace = inputs["namespace"]
    repository = {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
                  "metadata": {"name": "kuberay", "namespace": namespace},
                  "spec": {"url": inputs["repositoryOpts"]["repo"], "interval": "1h"}}
    release = {"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
               "metadata": {"name": inputs["name"], "namespace": namespace},
               "spec": {"interval": "1h",
                        "chart": {"spec": {"chart": inputs["chart"], "version": inputs["version"],
                                           "sourceRef": {"kind": "HelmRepository", "name": "kuberay"}}},
                        "install": {"crds": "CreateReplace"}, "upgrade": {"crds": "CreateReplace"},
                        "values": inputs.get("values") or {}}}
    return [repository, release]


def manifests(resources: list[Recorded]) -> list[dict[str, Any]]:
    """Kubernetes documents from recorded resources (non-Kubernetes resources, i.e. image builds, are left out)."""
    documents: list[dict[str, Any]] = []
    for resource in resources:
        inputs = redact(resource.inputs)
        if resource.type == CHART_TYPE:
            documents += _helm_documents(inputs)
        elif resource.type.startswith("kubernetes:"):
            documents.append(_ordered(inputs))
    return documents


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    # serveConfigV2 as a readable block, not one escaped line.
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def render(stack: str, out: Path, root: Path = REPO_ROOT) -> list[Path]:
    """Write one file per document into `out` (replacing an earlier render's files there); returns the paths."""
    config = to_pulumi_config(read_stack_file(stack, root))
    for key in SECRET_KEYS:
        config[f"{PROJECT}:{key}"] = f"<{key}>"  # placeholders: the real values never enter this process
    mocks = RecordingMocks(root=root)
    run_with_mocks(main, mocks, stack, config, [f"{PROJECT}:{key}" for key in SECRET_KEYS])
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("[0-9][0-9]-*.yaml"):  # an earlier render's, maybe of a resource no longer declared
        stale.unlink()
    written = []
    for index, document in enumerate(manifests(mocks.in_declaration_order())):
        slug = re.sub(r"[^a-z0-9.-]+", "-", f"{document['kind']}-{document['metadata']['name']}".lower())
        path = out / f"{index:02d}-{slug}.yaml"
        path.write_text(yaml.dump(document, Dumper=_Dumper, sort_keys=False))
        written.append(path)
    return written
