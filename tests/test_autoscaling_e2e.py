"""Replica autoscaling end to end: a local Ray, apps deployed from a Serve config (as KubeRay deploys serveConfigV2)
with `autoscaling_config`; a 1..2 app grows under concurrent load and shrinks back when idle without failing a
request, a 0..1 app answers its first request once a replica has started instead of failing it, and a router that
hosts its default model scales on that model's requests alone, not on the other model's that pass through it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Optional

import httpx
import pytest

from devtools.local_ray import LocalRay
from devtools.serve_rest import running_replicas
from infra.serve_config import MULTI_MODEL_IMPORT_PATH, application
from tests.engine_cases import MAX_MODEL_LEN

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

GROWS, FROM_ZERO, HOSTED, OTHER = "grows", "from-zero", "hosted", "other"
# Generous bounds: a second vLLM replica starts in about a minute on a loaded 2-core machine.
SCALE_WITHIN_S = 300


def vllm_app(model_dir: Path, served: str, autoscaling: dict) -> dict:
    return {"model_name": str(model_dir), "served_model_name": served, "target_device": "CPU",
            "max_model_len": MAX_MODEL_LEN, "num_cpus": 1, "max_ongoing_requests": 8,
            "engine_kwargs": {"kv_cache_memory_bytes": 64 * 2**20}, "autoscaling_config": autoscaling}


@pytest.fixture(scope="module")
def ray(tiny_model: Path):
    head = LocalRay(num_cpus=6)
    # Replicas report their load every second instead of every 10 (Serve's default), so a test sees a decision in
    # seconds; the decision itself is Serve's, from the app's own autoscaling_config.
    head.env["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = "1"
    head.start()
    try:
        grows = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 0,
                 "downscale_delay_s": 10, "look_back_period_s": 12}
        from_zero = {"min_replicas": 0, "max_replicas": 1, "target_ongoing_requests": 2, "upscale_delay_s": 0,
                     "downscale_delay_s": 10, "look_back_period_s": 12}
        # The router's replicas run HOSTED (the default model, 1..2 like GROWS); OTHER has a deployment of its own.
        several = {"models": [vllm_app(tiny_model, HOSTED, grows),
                              {**vllm_app(tiny_model, OTHER, {}), "autoscaling_config": None, "num_replicas": 1}]}
        head.serve.deploy(head.serve_config([application(GROWS, f"/{GROWS}", vllm_app(tiny_model, GROWS, grows)),
                                             application(FROM_ZERO, f"/{FROM_ZERO}",
                                                         vllm_app(tiny_model, FROM_ZERO, from_zero)),
                                             application(HOSTED, f"/{HOSTED}", several,
                                                         import_path=MULTI_MODEL_IMPORT_PATH)]))
        yield head
    finally:
        head.stop()


def replicas(ray: LocalRay, app: str, deployment: Optional[str] = None) -> int:
    running = running_replicas(ray.serve.applications()[app])
    return running.get(deployment, 0) if deployment else sum(running.values())


def target_replicas(ray: LocalRay, app: str, deployment: str) -> int:
    """Serve's decision: the replicas it wants, before any has started."""
    return ray.serve.applications()[app]["deployments"][deployment]["target_num_replicas"]


def wait_for(condition: Callable[[], bool], within: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if condition():
            return time.monotonic() - start
        time.sleep(1)
    pytest.fail(f"{what} did not happen within {within:.0f}s")


class Load:
    """`streams` clients sending completions one after another until stopped; every answer is kept."""

    def __init__(self, url: str, streams: int, max_tokens: int, model: Optional[str] = None):
        self.url, self.max_tokens, self.model = url, max_tokens, model
        self.results: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(streams)]

    def _run(self) -> None:
        body = {"prompt": "the cluster", "max_tokens": self.max_tokens, "ignore_eos": True, "temperature": 0,
                **({"model": self.model} if self.model else {})}
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(f"{self.url}/v1/completions", json=body)
                    self.results.append((response.status_code, response.text[:300]))
                except httpx.HTTPError as error:
                    self.results.append((0, repr(error)))

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=150)

    def failures(self) -> list[tuple[int, str]]:
        return [result for result in self.results if result[0] != 200]


def test_grows_under_load_and_shrinks_when_idle_without_failing_a_request(ray: LocalRay):
    url = ray.url(f"/{GROWS}")
    assert replicas(ray, GROWS) == 1
    with Load(url, streams=6, max_tokens=200) as load:
        grew = wait_for(lambda: replicas(ray, GROWS) == 2, SCALE_WITHIN_S, "scaling up to 2 replicas")
    assert load.results and not load.failures(), load.failures()[:3]
    # Below the target now: one request at a time keeps flowing while Serve removes the second replica.
    with Load(url, streams=1, max_tokens=16) as trickle:
        shrank = wait_for(lambda: replicas(ray, GROWS) == 1, SCALE_WITHIN_S, "scaling back to 1 replica")
        time.sleep(5)  # requests right after the replica went
    assert len(trickle.results) >= 3 and not trickle.failures(), trickle.failures()[:3]
    print(f"grew to 2 replicas in {grew:.0f}s under {len(load.results)} requests; back to 1 in {shrank:.0f}s, "
          f"{len(trickle.results)} requests during the scale-down, none failed")


def test_first_request_to_an_app_at_zero_waits_for_a_replica(ray: LocalRay):
    assert replicas(ray, FROM_ZERO) == 0
    started = time.monotonic()
    response = httpx.post(f"{ray.url(f'/{FROM_ZERO}')}/v1/completions", json={"prompt": "hello", "max_tokens": 4},
                          timeout=SCALE_WITHIN_S)
    waited = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4
    assert replicas(ray, FROM_ZERO) == 1
    print(f"the first request at zero replicas was answered after {waited:.0f}s (a replica started for it)")


def test_a_router_hosting_its_default_model_scales_on_that_models_requests_alone(ray: LocalRay):
    url = ray.url(f"/{HOSTED}")
    assert replicas(ray, HOSTED, "Router") == 1
    # Six streams for the other model pass through the router's replica: three times its target of 2, which
    # Serve's own rule (every ongoing request at the replica) would grow on within seconds.
    with Load(url, streams=6, max_tokens=200, model=OTHER) as passing:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            assert target_replicas(ray, HOSTED, "Router") == 1, "Serve grew the router on the other model's requests"
            time.sleep(1)
    assert passing.results and not passing.failures(), passing.failures()[:3]
    with Load(url, streams=6, max_tokens=200, model=HOSTED) as load:
        grew = wait_for(lambda: replicas(ray, HOSTED, "Router") == 2, SCALE_WITHIN_S, "the router scaling up to 2")
    assert load.results and not load.failures(), load.failures()[:3]
    shrank = wait_for(lambda: replicas(ray, HOSTED, "Router") == 1, SCALE_WITHIN_S, "the router scaling back to 1")
    print(f"{len(passing.results)} requests for the other model in 40s left the router at 1 replica; its own model's "
          f"grew it to 2 in {grew:.0f}s, back to 1 in {shrank:.0f}s")
