"""devtools/live_metrics.py without Ray: parsing Ray's metrics page, Prometheus' histogram_quantile, and the figures
`local status` prints from two scrapes. tests/test_metrics_e2e.py compares them with a real Prometheus."""

from __future__ import annotations

import math

import pytest

from devtools.live_metrics import figures, histogram_quantile, parse

COMMON = 'Component="core_worker",WorkerId="ab",deployment="LLMServer",replica="r1",engine="bigdl"'


def page(app: str, requests: int, generated: int, running: int, ttft: dict[str, int]) -> str:
    lines = ["# HELP ray_serving_requests_total HTTP requests answered", "# TYPE ray_serving_requests_total counter",
             f'ray_serving_requests_total{{{COMMON},application="{app}",route="openai",status="200"}} {requests - 1}',
             f'ray_serving_requests_total{{{COMMON},application="{app}",route="legacy",status="400"}} 1',
             f'ray_vllm_generation_tokens_total{{{COMMON},application="{app}"}} {generated}',
             f'ray_vllm_num_requests_running{{{COMMON},application="{app}"}} {running}',
             f'ray_vllm_num_requests_waiting{{{COMMON},application="{app}"}} 0']
    lines += [f'ray_vllm_time_to_first_token_seconds_bucket{{{COMMON},application="{app}",le="{le}"}} {count}'
              for le, count in ttft.items()]
    return "\n".join(lines) + "\n"


def test_parse_reads_names_labels_and_values():
    samples = parse('x_total{a="1",b="q\\"uote"} 3.5\n# a comment\ny 2\n')
    assert samples["x_total"] == {(("a", "1"), ("b", 'q"uote')): 3.5}
    assert samples["y"] == {(): 2.0}


def test_histogram_quantile_as_prometheus_computes_it():
    buckets = {0.1: 1, 0.5: 3, math.inf: 4}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.3)  # rank 2 of 4: halfway through (0.1, 0.5]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.99, buckets) == 0.5  # in +Inf: the highest finite bound
    assert histogram_quantile(0.5, {0.1: 0, math.inf: 0}) is None


def test_figures_per_application_from_two_scrapes():
    ttft = {"0.01": 0, "0.1": 2, "1.0": 4, "+Inf": 4}
    before = parse(page("cpu", 4, 100, 1, ttft) + page("acpu", 1, 10, 0, {"+Inf": 0}))
    after = parse(page("cpu", 6, 160, 2, ttft) + page("acpu", 1, 10, 0, {"+Inf": 0}))
    result = figures(before, after, elapsed=3.0)
    assert sorted(result) == ["acpu", "cpu"]
    cpu = result["cpu"]
    assert (cpu.requests, cpu.tokens_per_s, cpu.running, cpu.waiting) == (6, 20.0, 2, 0)
    assert cpu.ttft_p50 == pytest.approx(0.1) and cpu.ttft_p95 == pytest.approx(0.1 + 0.9 * 1.8 / 2)
    assert result["acpu"].tokens_per_s == 0 and result["acpu"].ttft_p50 is None
