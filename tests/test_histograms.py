"""serving_app/histograms.py without Ray: observations counted in the process, exported as Prometheus' histogram
series (cumulative `_bucket` per `le`, `_sum`, `_count`) through gauges."""

from __future__ import annotations

import threading

import pytest

from serving_app.histograms import AggregatedHistogram, le_label


class Gauges:
    """A gauge factory that keeps the last value per (name, tags), as Ray's agent exports a gauge."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[str, ...]] = {}
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def __call__(self, name: str, description: str, tag_keys: tuple[str, ...]) -> "Gauges":
        assert description and name not in self.keys
        self.keys[name] = tag_keys
        gauges = self

        class Gauge:
            def set(self, value: float, tags: dict[str, str]) -> None:
                assert set(tags) == set(tag_keys), (name, tags)
                gauges.values[(name, tuple(sorted(tags.items())))] = value

        return Gauge()

    def series(self, name: str, **tags: str) -> dict:
        return {dict(key).get("le"): value for (n, key), value in self.values.items()
                if n == name and all(dict(key).get(k) == v for k, v in tags.items())}


def histogram(gauges: Gauges, buckets=(0.01, 0.1, 1.0)) -> AggregatedHistogram:
    return AggregatedHistogram(gauges, "vllm_inter_token_latency_seconds", "Inter-token latency.", ("model_name",),
                               buckets)


def test_flush_exports_cumulative_buckets_exact_sum_and_count():
    gauges = Gauges()
    itl = histogram(gauges)
    observe = itl.bind({"model_name": "m"})
    for value in (0.005, 0.01, 0.05, 0.5, 3.0):  # 0.01 is in le="0.01", as Prometheus counts
        observe(value)
    itl.record(0.02, {"model_name": "other"})
    assert gauges.values == {}  # nothing reaches Ray before a flush
    itl.flush()
    assert gauges.keys["vllm_inter_token_latency_seconds_bucket"] == ("model_name", "le")
    assert gauges.series("vllm_inter_token_latency_seconds_bucket", model_name="m") == {
        "0.01": 2, "0.1": 3, "1.0": 4, "+Inf": 5}
    assert gauges.series("vllm_inter_token_latency_seconds_count", model_name="m") == {None: 5}
    assert gauges.series("vllm_inter_token_latency_seconds_sum", model_name="m")[None] == pytest.approx(3.565)
    assert gauges.series("vllm_inter_token_latency_seconds_bucket", model_name="other")["0.1"] == 1


def test_totals_only_grow_and_an_idle_series_is_set_again():
    gauges = Gauges()
    itl = histogram(gauges)
    observe = itl.bind({"model_name": "m"})
    observe(0.05)
    itl.flush()
    gauges.values.clear()  # as Ray's agent drops a gauge nobody set
    itl.flush()
    assert gauges.series("vllm_inter_token_latency_seconds_count", model_name="m") == {None: 1}
    observe(0.05)
    itl.flush()
    assert gauges.series("vllm_inter_token_latency_seconds_bucket", model_name="m")["0.1"] == 2


def test_observers_on_several_threads_lose_nothing():
    gauges = Gauges()
    itl = histogram(gauges)
    observe = itl.bind({"model_name": "m"})
    threads = [threading.Thread(target=lambda: [observe(0.05) for _ in range(20000)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(50):
        itl.flush()  # while they observe
    for thread in threads:
        thread.join()
    itl.flush()
    assert gauges.series("vllm_inter_token_latency_seconds_count", model_name="m") == {None: 80000}


def test_a_missing_label_and_bad_bounds_are_refused_by_name():
    itl = histogram(Gauges())
    with pytest.raises(ValueError, match=r"missing \['model_name'\], unknown \['engine'\]"):
        itl.bind({"engine": "vllm"})
    with pytest.raises(ValueError, match=r"vllm_inter_token_latency_seconds: missing \[\], unknown \['le'\]"):
        itl.record(0.1, {"model_name": "m", "le": "1"})
    with pytest.raises(ValueError, match="vllm_inter_token_latency_seconds: bucket bounds"):
        histogram(Gauges(), buckets=(0.0, 1.0))


def test_a_nan_is_not_counted_and_does_not_poison_the_sum():
    gauges = Gauges()
    itl = histogram(gauges)
    observe = itl.bind({"model_name": "m"})
    observe(float("nan"))
    observe(0.5)
    itl.flush()
    assert gauges.series("vllm_inter_token_latency_seconds_count", model_name="m") == {None: 1}
    assert gauges.series("vllm_inter_token_latency_seconds_sum", model_name="m") == {None: 0.5}


def test_le_is_written_as_prometheus_clients_write_it():
    assert [le_label(b) for b in (1, 0.005, 30.0, float("inf"))] == ["1.0", "0.005", "30.0", "+Inf"]
