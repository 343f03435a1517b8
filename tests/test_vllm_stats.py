"""serving_app/engines/vllm_stats.py without vLLM or Ray: prometheus_client's API as vLLM's stat logger drives it,
recorded with the serving labels in place of vLLM's engine index. tests/test_metrics_e2e.py runs vLLM's own logger."""

from __future__ import annotations

from serving_app import metrics
from serving_app.engines.vllm_stats import prometheus_classes
from serving_app.metrics import BASE_LABELS, MetricLabels
from tests.fake_metrics import FakeSink


def test_vllms_metric_classes_carry_the_serving_labels_instead_of_its_engine_index():
    sink = FakeSink()
    gauge, counter, histogram = prometheus_classes(sink, MetricLabels("tiny", "vllm", "NVIDIA"))
    # As vLLM's PrometheusStatLogger creates and labels them (loggers.py, create_metric_per_engine).
    success = counter(name="vllm:request_success", documentation="d", labelnames=["model_name", "engine",
                                                                                   "finished_reason"])
    success.labels("served-name", "0", "length").inc()
    success.labels("served-name", "0", "stop").inc(0)  # vLLM increments by zero every step: nothing for Ray
    running = gauge(name="vllm:num_requests_running", documentation="d", labelnames=["model_name", "engine"],
                    multiprocess_mode="mostrecent")
    running.labels("served-name", "0").set(3)
    rejections = counter(name="vllm:admission_rejections", labelnames=["model_name", "reason"])
    rejections.labels(model_name="served-name", reason="max_num_queued_reqs").inc(2)
    ttft = histogram(name="vllm:time_to_first_token_seconds", labelnames=["model_name", "engine"],
                     buckets=[0.5, 1.0])
    ttft.labels("served-name", "0").observe(0.02)
    other = histogram(name="vllm:request_params_n", labelnames=["model_name", "engine"], buckets=[1, 2, 5])
    other.labels("served-name", "0").observe(1)

    base = {"model_name": "tiny", "engine": "vllm", "hardware": "NVIDIA"}
    assert sink.records == [
        ("vllm_request_success", 1.0, {**base, "finished_reason": "length"}),
        ("vllm_num_requests_running", 3, base),
        ("vllm_admission_rejections", 2, {**base, "reason": "max_num_queued_reqs"}),
        ("vllm_time_to_first_token_seconds", 0.02, base),
        ("vllm_request_params_n", 1, base),
    ]
    # Our buckets where we define the meaning (the same for every engine), vLLM's elsewhere.
    assert sink.created["vllm_time_to_first_token_seconds"].buckets == metrics.LATENCY_BUCKETS
    assert sink.created["vllm_request_params_n"].buckets == (1, 2, 5)
    assert sink.created["vllm_request_success"].tag_keys == BASE_LABELS + ("finished_reason",)
