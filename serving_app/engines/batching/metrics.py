"""What the CPU engines' batching loop reports, with vLLM's names and meanings (serving_app/metrics.py), so one
dashboard reads every engine: recorded on the worker thread, one clock reading per step.

As vLLM counts them: prompt tokens when a prompt is prefilled; every generated token (of a request still wanted);
time to first token from arrival; one inter-token latency per later token; end-to-end latency, queue wait and
`vllm_request_success` for requests that finish (stop or length), not for those their client abandoned. The
running and waiting gauges and the KV cache are set after a step that changed them, and once when the loop starts
(a gauge set stays exported: serving_app.metrics.RaySink sets it again).
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence

from ...metrics import (
    BATCH_SIZE, E2E_LATENCY, GENERATION_TOKENS, INTER_TOKEN_LATENCY, ITERATION_TOKENS, KV_CACHE_BYTES, KV_CACHE_ROWS,
    KV_CACHE_USAGE, PROMPT_TOKENS, QUEUE_TIME, REQUEST_SUCCESS, RUNNING, TIME_TO_FIRST_TOKEN, WAITING, MetricLabels,
    MetricSpec, Recorder, Sink,
)
from .sequence import Row

SPECS = (RUNNING, WAITING, KV_CACHE_USAGE, KV_CACHE_ROWS, KV_CACHE_BYTES, PROMPT_TOKENS, GENERATION_TOKENS,
         REQUEST_SUCCESS, TIME_TO_FIRST_TOKEN, INTER_TOKEN_LATENCY, E2E_LATENCY, QUEUE_TIME, ITERATION_TOKENS,
         BATCH_SIZE)


class Observer(Protocol):
    """What the scheduler calls; `BatchMetrics` records, `NO_METRICS` does nothing."""

    def token(self, row: Row, now: float) -> None: ...

    def finished(self, row: Row, now: float) -> None: ...

    def step(self, kind: str, rows: Sequence[Row], prompt_tokens: int) -> None: ...

    def state(self, running: int, waiting: int, rows: Sequence[Row], cache_bytes: Optional[int]) -> None: ...


class _Nothing:
    def token(self, row: Row, now: float) -> None:
        pass

    def finished(self, row: Row, now: float) -> None:
        pass

    def step(self, kind: str, rows: Sequence[Row], prompt_tokens: int) -> None:
        pass

    def state(self, running: int, waiting: int, rows: Sequence[Row], cache_bytes: Optional[int]) -> None:
        pass


NO_METRICS: Observer = _Nothing()


class BatchMetrics:
    """The batching loop's metrics on a sink. `capacity`: the most tokens the KV cache can hold (batch_size rows of
    max_model_len), the 100 % of `vllm_kv_cache_usage_perc`."""

    def __init__(self, sink: Sink, labels: MetricLabels, capacity: int):
        if capacity < 1:
            raise ValueError(f"KV cache capacity must be at least one token, got {capacity}")
        self.recorder = Recorder(sink, labels, SPECS)
        self.capacity = capacity
        self._gauges: dict[str, float] = {}  # last value set, by name: an unchanged one is not set again

    def token(self, row: Row, now: float) -> None:
        """`row` was given one more token at `now` (time.monotonic())."""
        record = self.recorder.record
        if row.last_token_at is None:
            record(TIME_TO_FIRST_TOKEN, now - row.stream.arrived)
        else:
            record(INTER_TOKEN_LATENCY, now - row.last_token_at)
        row.last_token_at = now
        record(GENERATION_TOKENS, 1)

    def finished(self, row: Row, now: float) -> None:
        record = self.recorder.record
        record(REQUEST_SUCCESS, 1, finished_reason=row.finish or "stop")
        record(E2E_LATENCY, now - row.stream.arrived)
        record(QUEUE_TIME, row.scheduled - row.stream.arrived)

    def step(self, kind: str, rows: Sequence[Row], prompt_tokens: int) -> None:
        """One forward of `rows`: "prefill" (with the prompt tokens it computed) or "decode". Its tokens, as vLLM
        counts an iteration's: those computed plus those generated for requests still wanted."""
        record = self.recorder.record
        record(PROMPT_TOKENS, prompt_tokens)
        record(ITERATION_TOKENS, prompt_tokens + sum(1 for row in rows if not row.stream.aborted))
        record(BATCH_SIZE, len(rows), step=kind)

    def state(self, running: int, waiting: int, rows: Sequence[Row], cache_bytes: Optional[int]) -> None:
        self._gauge(RUNNING, running)
        self._gauge(WAITING, waiting)
        self._gauge(KV_CACHE_ROWS, len(rows))
        self._gauge(KV_CACHE_USAGE, min(1.0, sum(row.position for row in rows) / self.capacity))
        if cache_bytes is not None:
            self._gauge(KV_CACHE_BYTES, cache_bytes)

    def _gauge(self, spec: MetricSpec, value: float) -> None:
        if self._gauges.get(spec.name) != value:
            self._gauges[spec.name] = value
            self.recorder.record(spec, value)
