"""Live serving figures of a local Ray head, read from the same metrics a cluster's Prometheus scrapes
(serving_app/metrics.py): per application, requests answered, tokens generated per second, time to first token
p50/p95, requests running and waiting. Reads the head's metrics endpoints as Ray lists them for Prometheus (its
service-discovery file) twice, `window` seconds apart; needs neither Ray nor Prometheus.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from serving_app.metrics import GENERATION_TOKENS, REQUESTS, RUNNING, TIME_TO_FIRST_TOKEN, WAITING

# Local heads export every 2 s (Ray's default is 10), so a status window of a few seconds sees fresh figures.
EXPORT_INTERVAL_MS = 2000
DISCOVERY_FILE = "prom_metrics_service_discovery.json"

Labels = tuple[tuple[str, str], ...]
_SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def targets(ray_temp_dir: Path) -> list[str]:
    """host:port of every metrics endpoint Ray lists for Prometheus (nodes, autoscaler, dashboard)."""
    path = Path(ray_temp_dir) / "session_latest" / DISCOVERY_FILE
    return [target for group in json.loads(path.read_text()) for target in group["targets"]]


def prometheus_config(ray_temp_dir: Path) -> Path:
    """The Prometheus config Ray writes for this head (its service-discovery file as the scrape targets)."""
    return Path(ray_temp_dir) / "session_latest" / "metrics" / "prometheus" / "prometheus.yml"


def parse(text: str) -> dict[str, dict[Labels, float]]:
    """Prometheus' text format: name -> labels -> value."""
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or line.startswith("#"):
            continue
        name, labels, value = match.groups()
        key = tuple(sorted((k, v.encode().decode("unicode_escape")) for k, v in _LABEL.findall(labels or "")))
        samples[name][key] = float(value)
    return samples


def scrape(endpoints: Iterable[str], timeout: float = 10) -> dict[str, dict[Labels, float]]:
    merged: dict[str, dict[Labels, float]] = defaultdict(dict)
    for endpoint in endpoints:
        try:
            with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=timeout) as response:
                text = response.read().decode()
        except OSError:
            continue  # an endpoint that is gone (a restarted agent): the others still count
        for name, series in parse(text).items():
            merged[name].update(series)
    return merged


def _by_app(series: dict[Labels, float], *keep: str) -> dict[tuple[str, ...], float]:
    """Summed by application (and the labels in `keep`)."""
    summed: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, value in series.items():
        named = dict(labels)
        summed[(named.get("application", ""), *(named.get(k, "") for k in keep))] += value
    return summed


def histogram_quantile(q: float, buckets: dict[float, float]) -> Optional[float]:
    """Prometheus' histogram_quantile over cumulative bucket counts {upper bound: count}; None without data."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # above the highest finite bound: its value is all that is known
            return lower + (bound - lower) * (rank - below) / (count - below) if count > below else bound
        lower, below = bound, count
    return lower


@dataclass
class AppFigures:
    requests: float
    tokens_per_s: float
    ttft_p50: Optional[float]
    ttft_p95: Optional[float]
    running: float
    waiting: float


def figures(before: dict[str, dict[Labels, float]], after: dict[str, dict[Labels, float]],
            elapsed: float) -> dict[str, AppFigures]:
    """Per application: from two scrapes `elapsed` seconds apart (time to first token: since the replica began)."""
    requests = _by_app(after.get(REQUESTS.exported, {}))
    generated_now = _by_app(after.get(GENERATION_TOKENS.exported, {}))
    generated_then = _by_app(before.get(GENERATION_TOKENS.exported, {}))
    running, waiting = _by_app(after.get(RUNNING.exported, {})), _by_app(after.get(WAITING.exported, {}))
    buckets: dict[tuple[str, ...], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for (app, le), count in _by_app(after.get(f"{TIME_TO_FIRST_TOKEN.exported}_bucket", {}), "le").items():
        buckets[(app,)][float(le)] += count
    apps = sorted({key[0] for key in (*requests, *running, *generated_now) if key[0]})
    return {app: AppFigures(
        requests=requests.get((app,), 0),
        tokens_per_s=max(0.0, generated_now.get((app,), 0) - generated_then.get((app,), 0)) / elapsed,
        ttft_p50=histogram_quantile(0.5, buckets[(app,)]),
        ttft_p95=histogram_quantile(0.95, buckets[(app,)]),
        running=running.get((app,), 0),
        waiting=waiting.get((app,), 0),
    ) for app in apps}


def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def report(ray_temp_dir: Path, window: float = 1.5 * EXPORT_INTERVAL_MS / 1000) -> list[str]:
    """The lines `local status` prints: figures per application, then where to point a Prometheus."""
    endpoints = targets(ray_temp_dir)
    before, start = scrape(endpoints), time.monotonic()
    time.sleep(window)
    after = scrape(endpoints)
    lines = []
    for app, f in figures(before, after, time.monotonic() - start).items():
        lines.append(f"  {app}: {f.requests:.0f} requests, {f.tokens_per_s:.1f} tokens/s, TTFT p50 {_ms(f.ttft_p50)} "
                     f"p95 {_ms(f.ttft_p95)} (since start), {f.running:.0f} running, {f.waiting:.0f} waiting")
    lines.append(f"  metrics: {', '.join(f'http://{e}/metrics' for e in endpoints)}")
    lines.append(f"  Prometheus: prometheus --web.listen-address=127.0.0.1:9090 --config.file="
                 f"{prometheus_config(ray_temp_dir)} (Ray's own config, "
                 f"scraping the targets in {Path(ray_temp_dir) / 'session_latest' / DISCOVERY_FILE}); Grafana: "
                 f"import infra/dashboards/serving.json")
    return lines
