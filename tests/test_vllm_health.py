"""A dead vLLM engine fails the health endpoint and Serve's check_health, and Serve replaces the replica."""

from __future__ import annotations

import os
import signal
import time
import pytest

from devtools.serve_rest import http_json
from tests.replicas import engine_cores, replica_pid, running_replicas

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]


def test_killed_engine_is_reported_dead_and_the_replica_is_replaced(engine, server, base_url):
    if engine != "vllm":
        pytest.skip("kills vLLM's EngineCore process")
    # This app's own engine: other tests' apps on the same head may still be going down.
    cores = engine_cores(replica_pid(server, "llm"))
    assert len(cores) == 1, f"expected one vLLM EngineCore process, found {cores}"
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
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        new_cores = [pid for replica in running_replicas(server, "llm") for pid in engine_cores(replica)
                     if pid not in cores]
        try:
            # While the new replica loads, the proxy holds requests: a short wait, then ask again.
            status, body = http_json("GET", f"{base_url}/health", timeout=5)
        except OSError:
            status = None
        if new_cores and status == 200:
            break
        time.sleep(2)
    else:
        pytest.fail("Serve did not replace the replica whose engine died")
    status, body = http_json("POST", f"{base_url}/v1/completions", {"prompt": "back", "max_tokens": 3})
    assert status == 200, body
