"""Reading and validating rendered manifests (shared by the infra tests): one document per file, Kubernetes' own
schemas at the version the stacks target, the KubeRay CRD's schema as strict as `kubectl apply --validate=strict`."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.infra_helpers import CRD_DIR

K8S_VERSION = "1.33.0"


def strict_schema(schema: dict) -> dict:
    """Reject unknown fields (as `kubectl apply --validate=strict` does); the API server would drop them silently."""
    schema = copy.deepcopy(schema)

    def walk(node: dict) -> None:
        if not isinstance(node, dict):
            return
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for key in ("properties", "patternProperties"):
            for child in (node.get(key) or {}).values():
                walk(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key) or []:
                walk(child)

    walk(schema)
    return schema


@functools.cache
def rayservice_validator() -> jsonschema.Validator:
    """The KubeRay RayService CRD's v1 schema, strict; built once per process (checking the 1 MB schema itself on
    every call is what costs time)."""
    path = CRD_DIR / "ray.io_rayservices.yaml"
    if not path.is_file():
        pytest.fail(f"no RayService CRD for the operator version the stacks install: expected {path} "
                    f"(tests/fixtures/kuberay-crds/README.md)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB of YAML
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


def documents(paths: list[Path]) -> list[dict]:
    loaded = []
    for path in paths:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert len(docs) == 1, f"{path.name}: one document per file"
        loaded.append(docs[0])
    return loaded
