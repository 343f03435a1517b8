"""The serving metrics end to end: a real Prometheus scrapes the local Ray head that serves the suite's application
(`server`, this environment's engine), known traffic goes through HTTP, and PromQL must count it exactly.

The traffic: 5 whole answers (completions, chat, legacy) and 3 streamed ones, one streamed request whose client
leaves after its first event, one bad request. The deltas of every counter and histogram count over that traffic
are compared with what the clients saw and with the access log's lines; then every panel of the shipped dashboard
is evaluated over the traffic's time range and must show data (GPU panels against a DCGM-shaped exporter).
"""

from __future__ import annotations

import collections
import http.server
import json
import threading
import time
from typing import Any

import httpx
import pytest

from devtools.local_ray import LocalRay
from tests.dashboards import DASHBOARDS, GPU_ROW, dcgm_metrics, engines_of, load, metric_names, panels, substitute
from tests.conftest import ROUTE
from tests.engine_cases import MAX_MODEL_LEN, SERVED_MODEL
from tests.prometheus import SCRAPE_INTERVAL_S, Prometheus
from tests.ray_logs import access_lines, log_offsets, worker_logs

pytestmark = [pytest.mark.e2e, pytest.mark.engine_env]

APP = 'application="llm"'
LEAVER_MAX_TOKENS = MAX_MODEL_LEN - 64


# ---- a DCGM-shaped exporter for the GPU panels -----------------------------------------------------------------


def dcgm_page() -> bytes:
    """Every default DCGM metric for two GPUs, with dcgm-exporter's labels (and those its pod mapping adds)."""
    lines = []
    for gpu in ("0", "1"):
        labels = (f'gpu="{gpu}",UUID="GPU-0000000{gpu}-test",pci_bus_id="00000000:0{gpu}:00.0",device="nvidia{gpu}",'
                  f'modelName="NVIDIA H200",Hostname="gpu-node",namespace="default",pod="llm-gpu-worker-0",'
                  f'container="ray-worker"')
        lines += [f"{name}{{{labels}}} {10 + int(gpu)}" for name in sorted(dcgm_metrics())]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def dcgm_exporter():
    page = dcgm_page()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


# ---- Prometheus, the traffic and what it left ------------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(server: LocalRay, dcgm_exporter: str, tmp_path_factory: pytest.TempPathFactory):
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), server.temp_dir, (dcgm_exporter,)).start()
    try:
        up = prom.wait_for('up{job="ray"} == 1')
        assert up, f"Prometheus does not reach the Ray head's metrics: {prom.query('up')}"
        yield prom
    finally:
        prom.stop()


def settle(server: LocalRay) -> None:
    """Long enough for what was recorded to be exported by Ray (twice over) and scraped."""
    interval = float(server.env.get("RAY_metrics_report_interval_ms", "10000")) / 1000
    time.sleep(2 * interval + 2 * SCRAPE_INTERVAL_S)


def health(base_url: str) -> dict[str, Any]:
    return httpx.get(f"{base_url}/health", timeout=30).json()


def send_traffic(base_url: str) -> dict[str, Any]:
    """The known traffic; what each client saw."""
    post = lambda path, body: httpx.post(f"{base_url}{path}", json=body, timeout=300)  # noqa: E731
    seen: dict[str, Any] = {"usage": {}, "ids": []}
    completion = {"model": SERVED_MODEL, "prompt": "the cluster", "temperature": 0, "ignore_eos": True}
    chat = {"model": SERVED_MODEL, "messages": [{"role": "user", "content": "hello"}], "temperature": 0,
            "ignore_eos": True}
    for path, body in (("/v1/completions", {**completion, "max_tokens": 4}),
                       ("/v1/completions", {**completion, "max_tokens": 5, "prompt": "a longer prompt for it"}),
                       ("/v1/completions", {**completion, "max_tokens": 3}),
                       ("/v1/chat/completions", {**chat, "max_tokens": 6})):
        answer = post(path, body)
        assert answer.status_code == 200, answer.text
        seen["usage"][answer.json()["id"]] = answer.json()["usage"]
    legacy = post("/", {"prompt": "legacy prompt", "max_tokens": 5, "temperature": 0})
    assert legacy.status_code == 200, legacy.text
    for path, body in (("/v1/completions", {**completion, "max_tokens": 7}),
                       ("/v1/chat/completions", {**chat, "max_tokens": 6})):
        events = []
        with httpx.stream("POST", f"{base_url}{path}", timeout=300,
                          json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
            assert response.status_code == 200
            events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
        seen["usage"][events[-1]["id"]] = events[-1]["usage"]
    with httpx.stream("POST", f"{base_url}/", json={"prompt": "legacy stream", "max_tokens": 4, "stream": True},
                      timeout=300) as response:
        assert response.status_code == 200 and list(response.iter_lines())
    # The client that leaves: a long generation, closed after its first event.
    with httpx.stream("POST", f"{base_url}/v1/completions", timeout=300,
                      json={**completion, "max_tokens": LEAVER_MAX_TOKENS, "stream": True}) as response:
        next(line for line in response.iter_lines() if line.startswith("data: {"))
    bad = post("/v1/completions", {**completion, "max_tokens": -1})
    assert bad.status_code == 400
    deadline = time.monotonic() + 60
    while health(base_url)["running_requests"] and time.monotonic() < deadline:
        time.sleep(0.2)  # the departed client's generation is aborted
    return seen


COUNTS = {  # name: PromQL, each summed over the application's series
    "requests": f"ray_serving_requests_total{{{APP}}}",
    "success": f"ray_vllm_request_success_total{{{APP}}}",
    "prompt": f"ray_vllm_prompt_tokens_total{{{APP}}}",
    "generated": f"ray_vllm_generation_tokens_total{{{APP}}}",
    "ttft": f"ray_vllm_time_to_first_token_seconds_count{{{APP}}}",
    "itl": f"ray_vllm_inter_token_latency_seconds_count{{{APP}}}",
    "e2e": f"ray_vllm_e2e_request_latency_seconds_count{{{APP}}}",
    "queue": f"ray_vllm_request_queue_time_seconds_count{{{APP}}}",
    "decode_steps": f'ray_serving_batch_size_count{{{APP}, step="decode"}}',
}
BY = {  # name: (PromQL, label)
    "status": (f"sum by (status) (ray_serving_requests_total{{{APP}}})", "status"),
    "route": (f"sum by (route) (ray_serving_requests_total{{{APP}}})", "route"),
    "reason": (f"sum by (finished_reason) (ray_serving_requests_total{{{APP}}})", "finished_reason"),
    "success_reason": (f"sum by (finished_reason) (ray_vllm_request_success_total{{{APP}}})", "finished_reason"),
}


def snapshot(prom: Prometheus, base_url: str) -> dict[str, Any]:
    at = time.time()
    values: dict[str, Any] = {name: prom.value(f"sum({expr})", at) for name, expr in COUNTS.items()}
    values.update({name: prom.by(expr, label, at) for name, (expr, label) in BY.items()})
    values["health_decode_steps"] = health(base_url).get("decode_steps")
    return values


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0) for key, value in after.items() if value - before.get(key, 0)}


@pytest.fixture(scope="module")
def traffic(server: LocalRay, prometheus: Prometheus) -> dict[str, Any]:
    base_url, logs = server.url(ROUTE), worker_logs(server)
    # One request before the baseline, so every series has a sample before the traffic: a rate (and so a quantile)
    # needs two, and Prometheus never takes a series' first sample for its start from zero.
    warm_up = httpx.post(f"{base_url}/v1/completions", timeout=300,
                         json={"model": SERVED_MODEL, "prompt": "warm", "max_tokens": 2, "ignore_eos": True})
    assert warm_up.status_code == 200, warm_up.text
    settle(server)  # earlier tests' traffic exported and scraped
    offsets = log_offsets(logs)
    before = snapshot(prometheus, base_url)
    start = time.time()
    seen = send_traffic(base_url)
    settle(server)
    after = snapshot(prometheus, base_url)
    return {"before": before, "after": after, "start": start, "seen": seen, "lines": access_lines(logs, offsets, "llm")}


def change(traffic: dict[str, Any], name: str) -> Any:
    before, after = traffic["before"][name], traffic["after"][name]
    return delta(after, before) if isinstance(after, dict) else after - before


# ---- the access log ------------------------------------------------------------------------------------------


def test_one_access_line_per_request_with_what_the_client_saw(traffic):
    lines = traffic["lines"]
    assert collections.Counter(line["status"] for line in lines) == {200: 8, 499: 1, 400: 1}, lines
    assert collections.Counter(line["route"] for line in lines) == {"openai": 8, "legacy": 2}
    by_id = {line["request_id"]: line for line in lines}
    for request_id, usage in traffic["seen"]["usage"].items():  # the OpenAI answers' usage
        line = by_id[request_id]
        assert (line["prompt_tokens"], line["generated_tokens"]) == (usage["prompt_tokens"],
                                                                      usage["completion_tokens"])
        assert line["finish_reason"] == "length" and 0 < line["ttft_s"] <= line["duration_s"]
    [left] = [line for line in lines if line["status"] == 499]
    assert left["disconnected"] and left["finish_reason"] == "abort" and left["generated_tokens"] >= 1
    [bad] = [line for line in lines if line["status"] == 400]
    assert bad["finish_reason"] == "error" and bad["prompt_tokens"] == 0
    for line in lines:
        assert "request_body" not in line and "completion" not in line, "text is logged only when enabled"


# ---- PromQL against the traffic --------------------------------------------------------------------------------


def test_requests_are_counted_by_status_route_and_finish_reason(traffic):
    lines = traffic["lines"]
    assert change(traffic, "requests") == 10
    assert change(traffic, "status") == {"200": 8, "400": 1, "499": 1}
    assert change(traffic, "route") == {"openai": 8, "legacy": 2}
    assert change(traffic, "reason") == dict(collections.Counter(line["finish_reason"] for line in lines))


def test_the_engine_counts_finished_requests_and_tokens_exactly(traffic):
    lines = traffic["lines"]
    finished = [line for line in lines if line["status"] == 200]
    [left] = [line for line in lines if line["status"] == 499]
    assert change(traffic, "success") == 8
    assert change(traffic, "success_reason") == dict(collections.Counter(line["finish_reason"] for line in finished))
    # Every prompt that reached the engine was prefilled: the 8 answered and the departed one.
    assert change(traffic, "prompt") == sum(line["prompt_tokens"] for line in finished + [left])
    # The departed request generated from its first token until its abort landed, at most its max_tokens.
    extra = change(traffic, "generated") - sum(line["generated_tokens"] for line in finished)
    assert left["generated_tokens"] <= extra <= LEAVER_MAX_TOKENS


def test_histograms_have_one_observation_per_event(traffic):
    generated = change(traffic, "generated")
    assert change(traffic, "ttft") == 9  # every request that reached the engine had a first token
    assert change(traffic, "itl") == generated - 9  # and one interval per later token
    assert change(traffic, "e2e") == 8 and change(traffic, "queue") == 8  # finished requests only, as vLLM
    if traffic["after"]["health_decode_steps"] is not None:  # the CPU engines: one batch size per decode step
        assert change(traffic, "decode_steps") == (traffic["after"]["health_decode_steps"]
                                                   - traffic["before"]["health_decode_steps"])


def test_gauges_stay_exported_while_the_engine_is_idle(traffic, prometheus):
    # Idle for two export intervals now: Ray would have dropped a gauge nobody set since.
    for name in ("ray_vllm_num_requests_running", "ray_vllm_num_requests_waiting", "ray_vllm_kv_cache_usage_perc"):
        assert prometheus.value(f"sum({name}{{{APP}}})") == 0 and prometheus.query(f"{name}{{{APP}}}"), name


def test_every_series_has_the_engine_and_hardware_labels(traffic, prometheus, engine):
    for expr in (f"ray_serving_requests_total{{{APP}}}", f"ray_vllm_generation_tokens_total{{{APP}}}",
                 f"ray_vllm_num_requests_running{{{APP}}}"):
        for series in prometheus.query(expr):
            labels = series["metric"]
            assert labels["engine"] == engine and labels["model_name"] == SERVED_MODEL, labels
            assert labels["hardware"] and labels["deployment"] == "LLMServer" and labels["replica"], labels


# ---- the shipped dashboards ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_every_panel_of_the_dashboard_shows_data(traffic, prometheus, engine, path):
    empty, checked = [], 0
    for row, panel in panels(load(path)):
        if row != GPU_ROW and engine not in engines_of(panel):
            for target in panel["targets"]:  # still a valid query
                prometheus.query_range(substitute(target["expr"]), traffic["start"], time.time())
            continue
        results = [prometheus.query_range(substitute(target["expr"]), traffic["start"] - 5, time.time())
                   for target in panel["targets"]]
        points = [float(value) for result in results for series in result for _, value in series["values"]]
        checked += 1
        if not any(point == point for point in points):  # only NaN (or nothing): Grafana shows no data
            empty.append(f"{panel['title']}: {[target['expr'] for target in panel['targets']]}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert checked >= 10


def test_the_gpu_panels_read_the_dcgm_exporters_names(traffic, prometheus):
    for path in DASHBOARDS:
        for row, panel in panels(load(path)):
            if row == GPU_ROW:
                for target in panel["targets"]:
                    assert metric_names(target["expr"]) <= dcgm_metrics()
                    assert prometheus.query(substitute(target["expr"])), panel["title"]


# ---- `local status`: the same figures without a Prometheus -------------------------------------------------------


def test_local_status_figures_are_prometheus_figures(traffic, prometheus, server):
    from devtools.live_metrics import figures, scrape, targets

    snapshot = scrape(targets(server.temp_dir))
    ours = figures(snapshot, snapshot, elapsed=1.0)["llm"]
    assert ours.requests == prometheus.value(f"sum(ray_serving_requests_total{{{APP}}})")
    for q, value in ((0.5, ours.ttft_p50), (0.95, ours.ttft_p95)):
        expected = prometheus.value(f"histogram_quantile({q}, sum by (le) "
                                    f"(ray_vllm_time_to_first_token_seconds_bucket{{{APP}}}))")
        assert value == pytest.approx(expected)
    assert (ours.running, ours.waiting, ours.tokens_per_s) == (0, 0, 0)  # idle: nothing generated between scrapes
