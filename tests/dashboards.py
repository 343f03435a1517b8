"""The shipped Grafana dashboards (infra/dashboards/*.json) as the tests read them: their panels' queries with
Grafana's variables filled in, which engines a panel is for, and the DCGM exporter's metric names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((REPO / "infra" / "dashboards").glob("*.json"))
DCGM_COUNTERS = REPO / "tests" / "fixtures" / "dcgm" / "default-counters.csv"

# A panel whose title ends so shows data only where such an engine runs; every other serving panel, everywhere.
ENGINE_SCOPES = {"(CPU engines)": ("bigdl", "onnxruntime"), "(vLLM)": ("vllm",)}
GPU_ROW = "GPU (DCGM exporter)"


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(row title, panel) for every panel that is not a row, collapsed rows' panels included."""
    row = ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            for inner in panel.get("panels", []):
                yield row, inner
        else:
            yield row, panel


def engines_of(panel: dict[str, Any]) -> tuple[str, ...]:
    """The engines whose applications fill this panel (all, unless its title names some)."""
    for suffix, engines in ENGINE_SCOPES.items():
        if panel["title"].endswith(suffix):
            return engines
    return ("vllm", "bigdl", "onnxruntime")


def substitute(expr: str, rate_interval: str = "15s") -> str:
    """The query Grafana sends with every variable at "All" (its allValue, .*)."""
    expr = expr.replace("$__rate_interval", rate_interval)
    return re.sub(r"\$\{?(application|engine|namespace)\}?", ".*", expr)


def dcgm_metrics() -> set[str]:
    """The metrics dcgm-exporter exports by default (its default-counters.csv; `label` rows are labels)."""
    names = set()
    for line in DCGM_COUNTERS.read_text().splitlines():
        fields = [field.strip() for field in line.split(",")]
        if line.strip() and not line.startswith("#") and len(fields) >= 2 and fields[1] != "label":
            names.add(fields[0])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (identifiers followed by a selector)."""
    return set(re.findall(r"\b([A-Za-z_][A-Za-z0-9_]*)\{", expr))
