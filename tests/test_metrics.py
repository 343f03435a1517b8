"""serving_app/metrics.py without Ray: the metric table, the recorder, and the gauges kept alive for Ray."""

from __future__ import annotations

import re

import pytest

from serving_app import metrics
from serving_app.metrics import BASE_LABELS, SPECS, MetricLabels, Recorder
from tests.fake_metrics import FakeSink

LABELS = MetricLabels(model_name="tiny", engine="bigdl", hardware="INTEL")


def test_every_name_is_one_ray_exports_and_unique():
    names = [spec.name for spec in SPECS]
    assert len(names) == len(set(names))
    for spec in SPECS:
        # Ray drops names with ":" (vLLM's own "vllm:" prefix) or other characters Prometheus refuses.
        assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", spec.name), spec.name
        assert spec.kind in (metrics.COUNTER, metrics.GAUGE, metrics.HISTOGRAM)
        assert spec.tag_keys[:3] == BASE_LABELS
        assert not {"application", "deployment", "replica"} & set(spec.tag_keys), "Ray Serve adds those itself"
    assert metrics.REQUESTS.exported == "ray_serving_requests_total"
    assert metrics.TIME_TO_FIRST_TOKEN.exported == "ray_vllm_time_to_first_token_seconds"


def test_vllm_meanings_keep_vllms_names():
    """The names vLLM's own logger registers (vllm:<name>, Ray turning ":" into "_"), so its dashboards match."""
    for spec in (metrics.RUNNING, metrics.WAITING, metrics.KV_CACHE_USAGE, metrics.PROMPT_TOKENS,
                 metrics.GENERATION_TOKENS, metrics.REQUEST_SUCCESS, metrics.TIME_TO_FIRST_TOKEN,
                 metrics.INTER_TOKEN_LATENCY, metrics.E2E_LATENCY, metrics.QUEUE_TIME, metrics.PREEMPTIONS):
        assert spec.name.startswith("vllm_")
    assert metrics.REQUEST_SUCCESS.labels == ("finished_reason",)


@pytest.mark.parametrize("buckets", [metrics.LATENCY_BUCKETS, metrics.TOKEN_LATENCY_BUCKETS])
def test_time_buckets_cover_a_gpus_milliseconds_and_a_cpus_seconds(buckets):
    assert list(buckets) == sorted(set(buckets)) and buckets[0] > 0
    assert buckets[0] <= 0.001 and buckets[-1] >= 20
    # Fine enough for a quantile: no step wider than 2.5x.
    assert all(b / a <= 2.5 for a, b in zip(buckets, buckets[1:]))


def test_the_recorder_adds_the_replica_labels_and_skips_zero_increments():
    sink = FakeSink()
    recorder = Recorder(sink, LABELS, [metrics.REQUESTS, metrics.RUNNING])
    recorder.record(metrics.REQUESTS, 1, route="openai", finished_reason="stop", status="200")
    recorder.record(metrics.REQUESTS, 0, route="openai", finished_reason="stop", status="200")
    recorder.record(metrics.RUNNING, 0)
    assert sink.records == [
        ("serving_requests", 1, {**LABELS.tags(), "route": "openai", "finished_reason": "stop", "status": "200"}),
        ("vllm_num_requests_running", 0, LABELS.tags()),
    ]


class _Gauge:
    def __init__(self) -> None:
        self.sets: list[tuple[float, dict[str, str]]] = []

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.sets.append((value, tags))


def test_gauges_reach_ray_on_refresh_with_their_last_values_and_again_while_idle():
    keeper, gauge = metrics.GaugeKeeper(), _Gauge()
    keeper.set(gauge, 2, {"a": "1"})
    keeper.set(gauge, 0, {"a": "1"})
    keeper.set(gauge, 5, {"a": "2"})
    assert gauge.sets == []  # no Ray call on the engine's step
    keeper.refresh()
    assert gauge.sets == [(0, {"a": "1"}), (5, {"a": "2"})]
    keeper.refresh()  # nothing new: set again, so Ray does not drop an idle engine's zero
    assert gauge.sets[2:] == [(0, {"a": "1"}), (5, {"a": "2"})]


def test_outside_ray_nothing_is_recorded(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert metrics.process_sink() is None


def test_labels_come_from_the_serve_args():
    from serving_app.serve_args import ServeArgs

    args = ServeArgs(model_name="/models/x", served_model_name="x", target_device="AMD", data_type="int8")
    assert MetricLabels.of(args) == MetricLabels(model_name="x", engine="onnxruntime", hardware="AMD")
