"""Serving metrics: one set of names and labels for every engine, exported through Ray's metrics agent (the pods'
metrics port, 8080), so one scrape config and one dashboard cover the cluster.

- Engine metrics carry vLLM's names (`vllm_time_to_first_token_seconds`, `vllm_num_requests_running`, ...; Ray
  exports them as `ray_vllm_...`), so vLLM's dashboards and alerts work for the CPU engines too. vLLM records its
  own through its `RayPrometheusStatLogger` on this module's sink (engines/vllm_stats.py); the CPU engines'
  batching loop records the same meanings (engines/batching/metrics.py).
- `serving_requests` (every engine, recorded by the HTTP layer): requests answered, by route, finish reason and
  HTTP status, which no engine knows.

Every series is labelled `model_name`, `engine` (vllm, bigdl, onnxruntime) and `hardware` (the target device), and
by Ray Serve with `application`, `deployment` and `replica`. vLLM's own `engine` label (its engine index, always 0:
one engine per replica) is replaced by the engine's name. Histograms have one bucket list per meaning, the same for
every engine (quantiles summed across engines need the same buckets), from a GPU's milliseconds to a CPU's minutes.
Histograms are counted in the process and exported as the gauges `<name>_bucket{le}`, `_sum` and `_count`
(serving_app/histograms.py: Ray's own costs a core-worker call per observation, and vLLM observes per token).

Importable without Ray: instruments come from a `Sink`; `ray_sink()` is Ray's, tests pass their own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Protocol

from .histograms import AggregatedHistogram

logger = logging.getLogger(__name__)

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

# Labels of every serving series (Ray Serve adds application, deployment and replica).
BASE_LABELS = ("model_name", "engine", "hardware")

# Seconds: time to first token, end-to-end latency, queue wait.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0,
                   3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0)
# Seconds between two tokens of one request: an H200 decodes in a few milliseconds, a CPU in a second or more.
TOKEN_LATENCY_BUCKETS = (0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1,
                         0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 20.0)
# Requests (rows) in one forward step.
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


@dataclass(frozen=True)
class MetricSpec:
    """One metric as registered with Ray; Prometheus sees `ray_<name>`, counters with `_total`."""

    name: str
    kind: str
    description: str
    labels: tuple[str, ...] = ()  # beyond BASE_LABELS
    buckets: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        """The name a Prometheus query uses (a histogram's series add _bucket, _sum and _count)."""
        return f"ray_{self.name}" + ("_total" if self.kind == COUNTER else "")

    @property
    def tag_keys(self) -> tuple[str, ...]:
        return BASE_LABELS + self.labels


# Every engine, recorded by the HTTP layer (serving_app/access_log.py).
REQUESTS = MetricSpec("serving_requests", COUNTER,
                 "HTTP requests answered, by route (openai, legacy), finish reason and status (499: the client left).",
                 ("route", "finished_reason", "status"))

# vLLM's names and meanings (vllm/v1/metrics/loggers.py), recorded by vLLM for the vllm engine and by the batching
# loop for the CPU engines.
RUNNING = MetricSpec("vllm_num_requests_running", GAUGE, "Number of requests in model execution batches.")
WAITING = MetricSpec("vllm_num_requests_waiting", GAUGE, "Number of requests waiting to be processed.")
KV_CACHE_USAGE = MetricSpec("vllm_kv_cache_usage_perc", GAUGE, "KV-cache usage. 1 means 100 percent usage.")
PROMPT_TOKENS = MetricSpec("vllm_prompt_tokens", COUNTER, "Number of prefill tokens processed.")
GENERATION_TOKENS = MetricSpec("vllm_generation_tokens", COUNTER, "Number of generation tokens processed.")
REQUEST_SUCCESS = MetricSpec("vllm_request_success", COUNTER, "Count of successfully processed requests.",
                        ("finished_reason",))
TIME_TO_FIRST_TOKEN = MetricSpec("vllm_time_to_first_token_seconds", HISTOGRAM, "Histogram of time to first token in "
                            "seconds.", buckets=LATENCY_BUCKETS)
INTER_TOKEN_LATENCY = MetricSpec("vllm_inter_token_latency_seconds", HISTOGRAM, "Histogram of inter-token latency in "
                            "seconds.", buckets=TOKEN_LATENCY_BUCKETS)
E2E_LATENCY = MetricSpec("vllm_e2e_request_latency_seconds", HISTOGRAM, "Histogram of e2e request latency in seconds.",
                    buckets=LATENCY_BUCKETS)
QUEUE_TIME = MetricSpec("vllm_request_queue_time_seconds", HISTOGRAM, "Histogram of time spent in WAITING phase for "
                   "request.", buckets=LATENCY_BUCKETS)
ITERATION_TOKENS = MetricSpec("vllm_iteration_tokens_total", HISTOGRAM, "Histogram of number of tokens per engine_step.",
                         buckets=(1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384))
PREEMPTIONS = MetricSpec("vllm_num_preemptions", COUNTER, "Cumulative number of preemption from the engine.")

# The CPU engines' batching loop only (vLLM's batch is its running requests; its cache is a fixed block pool).
BATCH_SIZE = MetricSpec("serving_batch_size", HISTOGRAM, "Requests in one forward step (prefill or decode).", ("step",),
                   BATCH_SIZE_BUCKETS)
KV_CACHE_ROWS = MetricSpec("serving_kv_cache_rows", GAUGE, "Requests (rows) the KV cache holds.")
KV_CACHE_BYTES = MetricSpec("serving_kv_cache_bytes", GAUGE, "Bytes of memory the KV cache holds (allocated).")

SPECS = (REQUESTS, RUNNING, WAITING, KV_CACHE_USAGE, PROMPT_TOKENS, GENERATION_TOKENS, REQUEST_SUCCESS,
         TIME_TO_FIRST_TOKEN, INTER_TOKEN_LATENCY, E2E_LATENCY, QUEUE_TIME, ITERATION_TOKENS, PREEMPTIONS, BATCH_SIZE,
         KV_CACHE_ROWS, KV_CACHE_BYTES)
BY_NAME = {spec.name: spec for spec in SPECS}


@dataclass(frozen=True)
class MetricLabels:
    """The labels that tell one replica's engine from another's."""

    model_name: str
    engine: str
    hardware: str

    @classmethod
    def of(cls, args: Any) -> "MetricLabels":
        """From validated ServeArgs."""
        return cls(model_name=args.served_model_name, engine=args.engine.value, hardware=args.target_device.value)

    def tags(self) -> dict[str, str]:
        return {"model_name": self.model_name, "engine": self.engine, "hardware": self.hardware}


class Instrument(Protocol):
    def record(self, value: float, tags: dict[str, str]) -> None:
        """Counter: add `value`; gauge: set it; histogram: observe it."""

    def bind(self, tags: dict[str, str]) -> Callable[[float], None]:
        """`record` for one fixed label set (what a hot path calls)."""


class Sink(Protocol):
    def instrument(self, kind: str, name: str, description: str, tag_keys: tuple[str, ...],
                   buckets: tuple[float, ...] = ()) -> Instrument:
        """A new instrument (one per name per process)."""


class Recorder:
    """The instruments of some specs on one sink, each recorded with the replica's labels plus its own."""

    def __init__(self, sink: Sink, labels: MetricLabels, specs: Iterable[MetricSpec]):
        self.labels = labels.tags()
        self._instruments = {spec.name: sink.instrument(spec.kind, spec.name, spec.description, spec.tag_keys,
                                                        spec.buckets) for spec in specs}

    def record(self, spec: MetricSpec, value: float, **labels: str) -> None:
        if spec.kind == COUNTER and value <= 0:
            return  # Ray refuses a zero increment; nothing to count
        self._instruments[spec.name].record(value, {**self.labels, **labels})


# ---- Ray ---------------------------------------------------------------------------------------------------


class GaugeKeeper:
    """Each gauge series' last value, set in Ray by `refresh` (every half export interval, on its own thread): vLLM
    sets its gauges every engine step, and each Ray call costs microseconds of the replica's event loop, while Ray
    exports only the value at its export time. Setting them again also matters: Ray's agent drops a gauge not set
    for two export intervals, so an idle engine's running=0 would read as no data. `refresh` also flushes the
    histograms, which are gauges too (serving_app/histograms.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[Any, float, dict[str, str]]] = {}
        self.histograms: list[AggregatedHistogram] = []

    def set(self, gauge: Any, value: float, tags: dict[str, str]) -> None:
        with self._lock:
            self._last[(id(gauge), tuple(sorted(tags.items())))] = (gauge, value, tags)

    def refresh(self) -> None:
        with self._lock:
            last = list(self._last.values())
        for gauge, value, tags in last:
            gauge.set(value, tags=tags)
        for histogram in list(self.histograms):
            histogram.flush()


def export_interval_s() -> float:
    """Ray's metrics export interval (RayConfig metrics_report_interval_ms, overridable by its env variable)."""
    return max(1.0, float(os.environ.get("RAY_metrics_report_interval_ms", "10000")) / 1000)


class _RayInstrument:
    def __init__(self, kind: str, metric: Any, keeper: GaugeKeeper):
        self.kind = kind
        self.metric = metric
        self.keeper = keeper

    def record(self, value: float, tags: dict[str, str]) -> None:
        if self.kind == COUNTER:
            self.metric.inc(value, tags=tags)
        else:
            self.keeper.set(self.metric, value, tags)

    def bind(self, tags: dict[str, str]) -> Callable[[float], None]:
        return lambda value: self.record(value, tags)


class RaySink:
    """Ray Serve's metric classes: inside a replica they add application, deployment and replica."""

    def __init__(self) -> None:
        self.keeper = GaugeKeeper()
        self._refresher: Optional[threading.Thread] = None
        self._instruments: dict[str, Instrument] = {}
        self._lock = threading.Lock()

    def instrument(self, kind: str, name: str, description: str, tag_keys: tuple[str, ...],
                   buckets: tuple[float, ...] = ()) -> Instrument:
        from ray.serve import metrics

        with self._lock:
            if name in self._instruments:  # vLLM re-creates its logger when it is rebuilt; Ray keeps one per name
                return self._instruments[name]
            instrument: Instrument
            if kind == HISTOGRAM:  # counted here, exported as gauges (serving_app/histograms.py says why)
                histogram = AggregatedHistogram(
                    lambda n, d, keys: metrics.Gauge(n, description=d, tag_keys=keys), name, description, tag_keys,
                    buckets)
                self.keeper.histograms.append(histogram)
                instrument = histogram
            else:
                instrument = _RayInstrument(kind, (metrics.Counter if kind == COUNTER else metrics.Gauge)(
                    name, description=description, tag_keys=tag_keys), self.keeper)
            self._instruments[name] = instrument
            if kind != COUNTER and self._refresher is None:
                self._refresher = threading.Thread(target=self._refresh, name="metrics-gauges", daemon=True)
                self._refresher.start()
            return self._instruments[name]

    def _refresh(self) -> None:
        interval = export_interval_s() / 2
        while True:
            time.sleep(interval)
            try:
                self.keeper.refresh()
            except Exception:  # one bad series must not stop every metric of the replica
                logger.exception("setting the metrics in Ray failed; retrying at the next interval")


_RAY_SINK: Optional[RaySink] = None


def ray_sink() -> RaySink:
    """This process's Ray sink (Ray allows one metric per name per process)."""
    global _RAY_SINK
    if _RAY_SINK is None:
        _RAY_SINK = RaySink()
    return _RAY_SINK


def process_sink() -> Optional[Sink]:
    """Ray's sink in a Ray worker (a Serve replica), else None: an engine run without Ray records nothing."""
    try:
        import ray
    except ImportError:
        return None
    return ray_sink() if ray.is_initialized() else None
