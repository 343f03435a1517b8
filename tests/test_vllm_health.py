"""A dead vLLM engine fails the health endpoint and Serve's check_health, and Serve replaces the replica."""

from __future__ import annotations

import os
import signal
import time
import pytest

from devtools.serve_rest import http_json
from tests.replicas import engine_cores, running_replicas

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]


def _serving_engine(server, base_url: str, failure: str, replaced: tuple[int, ...] = (), timeout: float = 300) -> list[int]:
    """This app's one EngineCore (not one of `replaced`), once the app serves from one replica with that live engine.
    Used before the kill too: an earlier test on this head may have left the app otherwise (a replica Serve still
    counts as running while its engine is gone, until its health check fails)."""
    deadline = time.monotonic() + timeout
    while True:
        replicas = running_replicas(server, "llm")
        cores = [pid for replica in replicas for pid in engine_cores(replica) if pid not in replaced]
        try:
            # While a new replica loads, the proxy holds requests: a short wait, then ask again.
            status, _ = http_json("GET", f"{base_url}/health", timeout=5)
        except OSError:
            status = None
        if len(replicas) == 1 and len(cores) == 1 and status == 200:
            return cores
        if time.monotonic() > deadline:
            pytest.fail(f"{failure}: replicas {replicas}, engine cores {cores}, health {status}")
        time.sleep(1)


def test_killed_engine_is_reported_dead_and_the_replica_is_replaced(engine, server, base_url):
    if engine != "vllm":
        pytest.skip("kills vLLM's EngineCore process")
    cores = _serving_engine(server, base_url, "no serving replica with one vLLM EngineCore")
    os.kill(cores[0], signal.SIGKILL)

    deadline = time.monotonic() + 60
    seen_dead = False
    while time.monotonic() < deadline and not seen_dead:
        try:
            status, body = http_json("GET", f"{base_url}/health", timeout=5)
        except OSError:  # Serve may already be replacing the replica: the health route must still say 503 first
            continue
        seen_dead = status == 503
        time.sleep(0.2)
    assert seen_dead, "health endpoint kept answering ok with a dead engine"

    # Serve's check_health fails too, so Serve starts a new replica with a new engine.
    _serving_engine(server, base_url, "Serve did not replace the replica whose engine died", replaced=tuple(cores))
    status, body = http_json("POST", f"{base_url}/v1/completions", {"prompt": "back", "max_tokens": 3})
    assert status == 200, body
