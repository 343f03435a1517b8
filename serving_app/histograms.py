"""A histogram counted in this process and exported as the three series Prometheus has for one (`<name>_bucket`
with `le`, `<name>_sum`, `<name>_count`), each a Ray gauge holding the running total, set on every flush.

Why not Ray's own Histogram: each of its observations is one call into Ray's core worker (tags encoded, the C++
recorder's lock), 5-8 us. vLLM observes its inter-token latency once per generated token, so at 15k tokens/s that
was 13-16 % of a replica's one event-loop core (py-spy on an H200, benchmarks/RESULTS.md issue 18), the core that
caps throughput at high concurrency. Here an observation is a bisect and three additions; Ray is called once per
bucket per series per flush. The series keep their names and meaning, so dashboards and `histogram_quantile`
queries read them as before; `_sum` is the exact sum (Ray's histograms export bucket midpoints).

Importable without Ray: the gauges come from a factory.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from typing import Any, Callable, Iterable

# (name, description, tag_keys) -> an object with set(value, tags=...): a Ray Serve Gauge in a replica.
GaugeFactory = Callable[[str, str, tuple[str, ...]], Any]


def le_label(bound: float) -> str:
    """A bucket bound as Prometheus' clients write `le` (1.0, 0.005, +Inf)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class _Series:
    """One label set's bucket counts (not cumulative; the last is +Inf) and sum; the count is their total."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int):
        self.counts = [0] * (buckets + 1)
        self.total = 0.0


class AggregatedHistogram:
    """Observations counted here; `flush` sets the cumulative bucket counts, the sum and the count as gauges."""

    def __init__(self, gauge: GaugeFactory, name: str, description: str, tag_keys: tuple[str, ...],
                 buckets: Iterable[float]):
        self.bounds = tuple(sorted(float(b) for b in buckets))
        if not self.bounds or any(b <= 0 or math.isinf(b) for b in self.bounds):
            raise ValueError(f"{name}: bucket bounds must be positive and finite, got {self.bounds}")
        self.name = name
        self.tag_keys = tuple(tag_keys)
        self._le = [le_label(b) for b in self.bounds] + ["+Inf"]
        self._bucket = gauge(f"{name}_bucket", f"{description} (cumulative count per bucket)", self.tag_keys + ("le",))
        self._sum = gauge(f"{name}_sum", f"{description} (sum of observations)", self.tag_keys)
        self._count = gauge(f"{name}_count", f"{description} (number of observations)", self.tag_keys)
        self._series: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], _Series]] = {}
        self._lock = threading.Lock()

    def _series_of(self, tags: dict[str, str]) -> _Series:
        key = tuple(sorted(tags.items()))
        with self._lock:
            found = self._series.get(key)
            if found is None:
                missing, unknown = set(self.tag_keys) - set(tags), set(tags) - set(self.tag_keys)
                if missing or unknown:  # refused here: at the flush it would be the metrics thread that fails
                    raise ValueError(f"tags of {self.name}: missing {sorted(missing)}, unknown {sorted(unknown)}")
                found = self._series[key] = (dict(tags), _Series(len(self.bounds)))
            return found[1]

    def _observe(self, series: _Series, value: float) -> None:
        if value != value:  # NaN: it would land in the first bucket and make the sum NaN for good
            return
        index = bisect_left(self.bounds, value)  # the first bound >= value: Prometheus' `le`
        with self._lock:  # observers may be several threads; the flush reads from its own
            series.counts[index] += 1
            series.total += value

    def bind(self, tags: dict[str, str]) -> Callable[[float], None]:
        """`observe` for one fixed label set: what vLLM's stat logger calls per token, without a per-call lookup."""
        series = self._series_of(tags)
        return lambda value: self._observe(series, value)

    def record(self, value: float, tags: dict[str, str]) -> None:
        self._observe(self._series_of(tags), value)

    def flush(self) -> None:
        """Set every series' gauges to its totals so far (also keeps them exported while nothing is observed)."""
        with self._lock:
            snapshot = [(tags, list(series.counts), series.total) for tags, series in self._series.values()]
        for tags, counts, total in snapshot:
            cumulative = 0
            for le, count in zip(self._le, counts):
                cumulative += count
                self._bucket.set(cumulative, tags={**tags, "le": le})
            self._sum.set(total, tags=dict(tags))
            self._count.set(cumulative, tags=dict(tags))
