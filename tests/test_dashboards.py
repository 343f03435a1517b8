"""The Grafana dashboards in infra/dashboards/: the JSON Grafana's dashboard sidecar loads, a datasource variable
every query goes through, unique panel ids, a grid without overlaps, and queries that read only metrics this
project exports (serving_app/metrics.py) or the DCGM exporter exports by default. Whether every panel shows data
against a real Prometheus is tests/test_metrics_e2e.py's job."""

from __future__ import annotations

import pytest

from serving_app.metrics import HISTOGRAM, SPECS
from tests.dashboards import DASHBOARDS, GPU_ROW, dcgm_metrics, load, metric_names, panels

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def exported_series() -> set[str]:
    names = set()
    for spec in SPECS:
        if spec.kind == HISTOGRAM:
            names |= {f"{spec.exported}_bucket", f"{spec.exported}_sum", f"{spec.exported}_count"}
        else:
            names.add(spec.exported)
    return names


def test_there_is_a_serving_dashboard():
    assert [path.name for path in DASHBOARDS] == ["serving.json"]


@pytest.fixture(params=DASHBOARDS, ids=lambda path: path.name)
def dashboard(request):
    return load(request.param)


def test_top_level_fields(dashboard):
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40  # Grafana's limit
    assert dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    assert "id" not in dashboard or dashboard["id"] is None  # provisioned dashboards get their id from Grafana


def test_the_datasource_is_a_variable_every_query_uses(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE
            assert variable["includeAll"] and variable["allValue"] == ".*"
    for _, panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_panel_ids_are_unique_and_the_grid_has_no_overlap(dashboard):
    everything = list(dashboard["panels"]) + [inner for p in dashboard["panels"] for inner in p.get("panels", [])]
    ids = [panel["id"] for panel in everything]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells = set()
    for panel in everything:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(grid["y"] + dy, grid["x"] + dx) for dy in range(grid["h"]) for dx in range(grid["w"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_every_panel_has_queries_with_unique_ref_ids(dashboard):
    for _, panel in panels(dashboard):
        assert panel["type"] in ("timeseries", "stat", "gauge", "table"), panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_queries_read_only_metrics_that_exist(dashboard):
    ours, dcgm = exported_series(), dcgm_metrics()
    for row, panel in panels(dashboard):
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: no metric in {target['expr']}"
            known = dcgm if row == GPU_ROW else ours
            assert names <= known, f"{panel['title']}: {sorted(names - known)} not exported"


def test_serving_queries_filter_by_application_and_engine(dashboard):
    for row, panel in panels(dashboard):
        for target in panel["targets"]:
            if row != GPU_ROW:
                assert 'application=~"$application"' in target["expr"] and 'engine=~"$engine"' in target["expr"]
