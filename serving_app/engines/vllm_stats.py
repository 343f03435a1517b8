"""vLLM's own engine statistics (TTFT, ITL, cache usage, preemptions, ...) exported through Ray with the serving
labels: vLLM's `RayPrometheusStatLogger` with prometheus_client's metric API re-implemented over a serving_app.metrics
Sink, so vLLM's series carry `engine` (the engine's name, in place of vLLM's engine index: one engine per replica),
`hardware` and `model_name` like the CPU engines', and the bucket lists serving_app/metrics.py gives each meaning.
Importable without vLLM (the stat logger class is built on demand)."""

from __future__ import annotations

import re
import time
from typing import Any, Iterable, Optional

from ..metrics import BASE_LABELS, BY_NAME, COUNTER, GAUGE, HISTOGRAM, Instrument, MetricLabels, Sink

_NOT_NAME = re.compile(r"[^a-zA-Z0-9_]")  # Ray exports no metric whose name has a ":" (vLLM's "vllm:...")


class _Child:
    """A metric bound to its label values: what prometheus_client's `labels(...)` returns."""

    def __init__(self, instrument: Instrument, tags: dict[str, str]):
        self._record = instrument.bind(tags)  # vLLM observes its inter-token latency per token: no per-call lookup

    def inc(self, value: float = 1.0) -> None:
        if value > 0:
            self._record(value)

    def set(self, value: float) -> None:
        self._record(value)

    def observe(self, value: float) -> None:
        self._record(value)

    def set_to_current_time(self) -> None:
        self.set(time.time())


class PrometheusFamily:
    """A metric family the way vLLM's stat logger creates and labels them (prometheus_client's Counter, Gauge and
    Histogram), recorded on a sink with the replica's labels in place of vLLM's `engine` index."""

    kind = ""

    def __init__(self, sink: Sink, labels: MetricLabels, name: str, documentation: str = "",
                 labelnames: Optional[Iterable[str]] = None, buckets: Optional[Iterable[float]] = None,
                 multiprocess_mode: str = ""):
        del multiprocess_mode  # Ray keys every series by its worker
        self.name = _NOT_NAME.sub("_", name)
        self._labelnames = tuple(labelnames or ())
        own = tuple(n for n in self._labelnames if n not in BASE_LABELS)
        known = BY_NAME.get(self.name)
        bounds = known.buckets if known is not None and known.buckets else tuple(buckets or ())
        self._base = labels.tags()
        self._instrument = sink.instrument(self.kind, self.name, documentation or "", BASE_LABELS + own, bounds)

    def labels(self, *values: Any, **named: Any) -> _Child:
        given = dict(zip(self._labelnames, values), **named)
        own = {key: str(value) for key, value in given.items() if key not in BASE_LABELS}
        return _Child(self._instrument, {**self._base, **own})

    # An unlabelled family records with the base labels only.
    def inc(self, value: float = 1.0) -> None:
        self.labels().inc(value)

    def set(self, value: float) -> None:
        self.labels().set(value)

    def observe(self, value: float) -> None:
        self.labels().observe(value)


def prometheus_classes(sink: Sink, labels: MetricLabels) -> tuple[type, type, type]:
    """(Gauge, Counter, Histogram) classes bound to this sink and these labels, for a stat logger's class slots."""

    def bound(kind: str) -> type:
        def __init__(self: PrometheusFamily, *args: Any, **kwargs: Any) -> None:
            PrometheusFamily.__init__(self, sink, labels, *args, **kwargs)

        return type(f"{kind.title()}Family", (PrometheusFamily,), {"kind": kind, "__init__": __init__})

    return bound(GAUGE), bound(COUNTER), bound(HISTOGRAM)


def stat_logger_class(labels: MetricLabels, sink: Sink) -> type:
    """vLLM's RayPrometheusStatLogger recording through these classes, for AsyncLLM's `stat_loggers`. A custom
    logger keeps vLLM's statistics on while disable_log_stats keeps them out of the log."""
    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

    gauge, counter, histogram = prometheus_classes(sink, labels)
    return type("ServingStatLogger", (RayPrometheusStatLogger,),
                {"_gauge_cls": gauge, "_counter_cls": counter, "_histogram_cls": histogram})
