"""The CPU engines' batching loop reports vLLM's engine metrics with vLLM's meanings
(serving_app/engines/batching/metrics.py), checked against a scripted model whose every step is known."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.engine_env
pytest.importorskip("torch")
pytest.importorskip("transformers")

from serving_app.engines.batching.metrics import BatchMetrics  # noqa: E402
from serving_app.metrics import MetricLabels  # noqa: E402
from tests.fake_metrics import FakeSink  # noqa: E402
from tests.batching_helpers import collect, request, run, scripted  # noqa: E402

LABELS = MetricLabels(model_name="tiny", engine="bigdl", hardware="INTEL")
MAX_LEN = 2048


def test_tokens_latencies_and_outcomes_as_vllm_counts_them():
    sink = FakeSink()
    scheduler, model = scripted(slow=0.002, batch_timeout=0.2,
                                metrics=BatchMetrics(sink, LABELS, capacity=8 * MAX_LEN))

    async def scenario():
        left = scheduler.generate(request("left", [1, 2, 3], 1000, ignore_eos=True))
        await left.__anext__()  # its first token, then its client leaves
        finished = await asyncio.gather(
            collect(scheduler, request("length", [1, 2], 5)),
            collect(scheduler, request("eos", [35], 30)),  # 36 .. 39, then 0 = eos: 5 tokens, "stop"
        )
        await left.aclose()
        await asyncio.sleep(0.05)  # the worker drops the departed row and reports
        return finished

    (_, length, _), (_, eos, _) = run(scenario())
    scheduler.shutdown()
    assert (length.finish_reason, length.num_generated_tokens, eos.finish_reason, eos.num_generated_tokens) == (
        "length", 5, "stop", 5)

    generated = sink.total("vllm_generation_tokens")
    ttft, itl = sink.of("vllm_time_to_first_token_seconds"), sink.of("vllm_inter_token_latency_seconds")
    assert sink.total("vllm_prompt_tokens") == 3 + 2 + 1  # every prompt was prefilled
    assert len(ttft) == 3 and len(itl) == generated - 3  # one first token per request, an interval per later one
    assert generated > 10  # the departed request's tokens count up to its departure
    # Only requests that finish count as successes and have an end-to-end latency, as in vLLM.
    assert sink.total("vllm_request_success", finished_reason="length") == 1
    assert sink.total("vllm_request_success", finished_reason="stop") == 1
    assert len(sink.of("vllm_e2e_request_latency_seconds")) == len(sink.of("vllm_request_queue_time_seconds")) == 2
    assert all(t > 0 for t in ttft + itl)
    # One batch size and one iteration-token observation per forward of the model.
    prefills = [rows for rows, _, prefill in model.calls if prefill]
    decodes = [rows for rows, _, prefill in model.calls if not prefill]
    assert sink.of("serving_batch_size", step="prefill") == prefills
    assert sink.of("serving_batch_size", step="decode") == decodes
    assert len(sink.of("vllm_iteration_tokens_total")) == len(model.calls)
    assert sum(sink.of("vllm_iteration_tokens_total")) == 6 + generated
    # The state after the last step: nothing running, waiting or cached.
    for gauge in ("vllm_num_requests_running", "vllm_num_requests_waiting", "serving_kv_cache_rows",
                  "serving_kv_cache_bytes", "vllm_kv_cache_usage_perc"):
        assert sink.last(gauge) == 0, gauge
    assert max(sink.of("vllm_num_requests_running")) == 3
    assert 0 < max(sink.of("vllm_kv_cache_usage_perc")) < 1
    assert max(sink.of("serving_kv_cache_bytes")) > 0
    assert all(LABELS.tags().items() <= tags.items() for _, _, tags in sink.records)


def test_the_gauges_exist_before_any_request():
    sink = FakeSink()
    scheduler, _ = scripted(metrics=BatchMetrics(sink, LABELS, capacity=MAX_LEN))
    run(asyncio.sleep(0.05))
    scheduler.shutdown()
    assert sink.last("vllm_num_requests_running") == 0 and sink.last("vllm_num_requests_waiting") == 0


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        BatchMetrics(FakeSink(), LABELS, capacity=0)


def test_an_unchanged_gauge_is_not_set_again():
    sink = FakeSink()
    metrics = BatchMetrics(sink, LABELS, capacity=MAX_LEN)
    for _ in range(3):
        metrics.state(running=1, waiting=0, rows=[], cache_bytes=None)
    metrics.state(running=2, waiting=0, rows=[], cache_bytes=None)
    assert sink.of("vllm_num_requests_running") == [1, 2] and sink.of("vllm_num_requests_waiting") == [0]
