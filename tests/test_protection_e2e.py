"""Protection end to end, through a Serve config on the local Ray (HAProxy ingress, as in the cluster): API keys,
the body-size limit, load shedding, other clients' latency while hostile requests are refused, and faults (the
engine, then the replica's actor, killed under in-flight requests) with the time to recovery.

A second application beside the suite's (`server`), with the same engine and model, small limits and two keys
(rotation) in its environment; the fault tests run last, they leave its replica replaced.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
import openai
import pytest

from devtools.local_ray import descendants
from tests import replicas
from tests.replicas import engine_cores, running
from tests.secret_volume import update_secret_file
from infra.serve_config import application
from tests.engine_cases import MAX_MODEL_LEN, SERVED_MODEL

pytestmark = [pytest.mark.e2e, pytest.mark.engine_env]

NAME, ROUTE = "guarded", "/guarded"
OLD_KEY, NEW_KEY = "old-key-0123456789abcdef", "new-key-fedcba9876543210"
AUTH = {"Authorization": f"Bearer {NEW_KEY}"}
LIMITS = {"max_ongoing_requests": 2, "max_queued_requests": 2, "retry_after_s": 2, "max_request_bytes": 256 * 1024}
LONG = {"prompt": "the model", "max_tokens": MAX_MODEL_LEN - 64, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api-keys")


@pytest.fixture(scope="module")
def guarded(server, key_dir: Path) -> str:
    """Our application deployed beside the suite's, with the suite's own args (its engine, its converted model), its
    keys in a file kept like a mounted Secret (as in the cluster: infra/manifests.py)."""
    apps = server.serve.applications()
    configs = [apps[name]["deployed_app_config"] for name in apps]
    suite = next(config for config in configs if config["route_prefix"] != ROUTE)
    key_file = update_secret_file(key_dir, "API_KEYS", f"{OLD_KEY},{NEW_KEY}")
    ours = application(NAME, ROUTE, {**suite["args"], **LIMITS}, {"env_vars": {"API_KEYS_FILE": str(key_file)}})
    server.serve.deploy(server.serve_config([*configs, ours]), timeout=900)
    try:
        yield server.url(ROUTE)
    finally:
        server.serve.put_config(server.serve_config(configs))


def post(url: str, body: Any, headers: Optional[dict[str, str]] = AUTH, timeout: float = 120) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url, content=content, headers={"Content-Type": "application/json", **(headers or {})},
                      timeout=timeout)


def error_code(response: httpx.Response) -> Optional[str]:
    return response.json()["error"]["code"]


# ---- API keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    ("/", {"prompt": "hi", "max_tokens": 2}),
    ("", {"prompt": "hi", "max_tokens": 2}),  # the legacy route at the bare prefix
])
def test_every_api_route_needs_a_key(guarded, path, body):
    for headers in (None, {"Authorization": "Bearer not-a-key"}, {"Authorization": OLD_KEY}):
        response = post(guarded + path, body, headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["type"] == "invalid_request_error" and error_code(response) == "invalid_api_key"
    assert httpx.get(guarded + "/v1/models").status_code == 401
    assert post(guarded + path, body).status_code == 200


def test_both_keys_work_with_the_openai_sdk_and_health_is_open(guarded):
    for key in (OLD_KEY, NEW_KEY):
        client = openai.OpenAI(base_url=f"{guarded}/v1", api_key=key, max_retries=0, timeout=120)
        assert client.completions.create(model=SERVED_MODEL, prompt="hi", max_tokens=3).usage.completion_tokens
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{guarded}/v1", api_key="wrong", max_retries=0).models.list()
    health = httpx.get(guarded + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


# ---- request limits --------------------------------------------------------------------------------------


def test_a_rotated_key_reaches_the_running_replica(server, guarded, key_dir):
    third = "third-key-00112233445566778899"
    replica = replica_pid(server)
    update_secret_file(key_dir, "API_KEYS", f"{NEW_KEY},{third}")
    try:
        deadline = time.monotonic() + 30  # the replica looks at the file every 5 s
        while post(f"{guarded}/v1/completions", {"prompt": "hi", "max_tokens": 2},
                   {"Authorization": f"Bearer {third}"}).status_code == 401 and time.monotonic() < deadline:
            time.sleep(1)
        assert post(f"{guarded}/v1/completions", {"prompt": "hi", "max_tokens": 2},
                    {"Authorization": f"Bearer {third}"}).status_code == 200
        assert post(f"{guarded}/v1/completions", {"prompt": "hi", "max_tokens": 2},
                    {"Authorization": f"Bearer {OLD_KEY}"}).status_code == 401
        assert replica_pid(server) == replica  # no restart
    finally:
        update_secret_file(key_dir, "API_KEYS", f"{OLD_KEY},{NEW_KEY}")


def test_a_body_over_the_limit_is_a_413_before_it_is_read(guarded):
    big = b'{"prompt": "' + b"x" * (20 * 2**20) + b'"}'
    start = time.monotonic()
    response = post(guarded + "/v1/completions", big)
    assert response.status_code == 413 and error_code(response) == "request_too_large", response.text
    assert time.monotonic() - start < 5

    def chunked():  # no Content-Length: counted as it arrives
        for _ in range(64):
            yield b"x" * 8192

    response = httpx.post(guarded + "/v1/completions", content=chunked(), headers=AUTH, timeout=60)
    assert response.status_code == 413


def test_a_prompt_longer_than_the_context_can_hold_is_refused_before_tokenizing(guarded):
    response = post(guarded + "/v1/completions", {"prompt": "word " * 50_000})
    assert response.status_code == 400 and error_code(response) == "context_length_exceeded"
    assert "characters" in response.json()["error"]["message"]


def latencies(url: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.monotonic()
        response = post(url + "/v1/completions", {"prompt": "hi", "max_tokens": 4, "temperature": 0}, timeout=60)
        assert response.status_code == 200, response.text
        times.append(time.monotonic() - start)
    return times


def test_other_clients_keep_their_latency_while_hostile_requests_are_refused(guarded):
    baseline = latencies(guarded, 8)
    refusals: list[tuple[int, float]] = []
    stop = threading.Event()

    def hostile() -> None:
        bodies = [b'{"prompt": "' + b"x" * (20 * 2**20) + b'"}',
                  json.dumps({"prompt": "x" * (200 * 1024)}).encode()]
        while not stop.is_set():
            for body in bodies:
                start = time.monotonic()
                refusals.append((post(guarded + "/v1/completions", body).status_code, time.monotonic() - start))

    attacker = threading.Thread(target=hostile)
    attacker.start()
    try:
        time.sleep(0.5)
        during = latencies(guarded, 8)
    finally:
        stop.set()
        attacker.join()
    assert {status for status, _ in refusals} == {413, 400}
    assert max(seconds for _, seconds in refusals) < 5
    # Before these limits one 20 MB prompt stalled every other request to the replica for ~13 s.
    assert statistics.median(during) < 2 * statistics.median(baseline) + 0.25, (baseline, during)
    assert max(during) < 3, (baseline, during)


# ---- load shedding ---------------------------------------------------------------------------------------


def test_requests_beyond_the_queue_are_shed_at_once_with_retry_after(guarded):
    results: list[tuple[httpx.Response, float]] = []

    def one() -> None:
        start = time.monotonic()
        response = post(guarded + "/v1/completions", {**LONG, "max_tokens": 400})
        results.append((response, time.monotonic() - start))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(response.status_code for response, _ in results)
    assert set(statuses) == {200, 503}, statuses
    assert statuses.count(200) >= LIMITS["max_ongoing_requests"] + LIMITS["max_queued_requests"]
    shed = [(response, seconds) for response, seconds in results if response.status_code == 503]
    served = min(seconds for response, seconds in results if response.status_code == 200)
    for response, seconds in shed:
        assert response.headers["retry-after"] == "2" and error_code(response) == "overloaded"
        assert seconds < min(served, 5)  # answered at once, not after waiting for a slot
    health = httpx.get(guarded + "/health").json()
    assert (health["admitted_requests"], health["queued_requests"]) == (0, 0)


# ---- faults ----------------------------------------------------------------------------------------------


def replica_pid(server) -> int:
    return replicas.replica_pid(server, NAME)


class InFlight:
    """Two streamed long requests running and two whole ones queued behind them (max_ongoing_requests and
    max_queued_requests being 2), each in its own thread, recording how and when it ended. The streams go first and
    the whole ones only once both stream: sent together, the whole ones could take the two slots and, on a fast
    machine, finish before the fault."""

    def __init__(self, url: str):
        self.url = url
        self.outcomes: dict[str, tuple[str, float]] = {}
        self.started: dict[str, threading.Event] = {f"stream{i}": threading.Event() for i in range(2)}
        self.threads = [threading.Thread(target=self._stream, args=(name,)) for name in self.started]
        for thread in self.threads:
            thread.start()
        for name, streaming in self.started.items():
            assert streaming.wait(60), f"{name} did not start streaming: {self.outcomes}"
        whole = [threading.Thread(target=self._whole, args=(f"whole{i}",)) for i in range(2)]
        for thread in whole:
            thread.start()
        self.threads += whole
        deadline = time.monotonic() + 30
        while httpx.get(url + "/health").json()["queued_requests"] < 2:
            assert time.monotonic() < deadline and not self.outcomes, f"the whole requests are not queued: {self.outcomes}"
            time.sleep(0.05)

    def _record(self, name: str, work: Callable[[], str]) -> None:
        try:
            outcome = work()
        except httpx.HTTPError as error:
            outcome = f"connection: {type(error).__name__}"
        self.outcomes[name] = (outcome, time.monotonic())

    def _stream(self, name: str) -> None:
        def work() -> str:
            last = None
            with httpx.stream("POST", self.url + "/v1/completions", json={**LONG, "stream": True}, headers=AUTH,
                              timeout=120) as response:
                if response.status_code != 200:
                    return f"{response.status_code}: {response.read().decode()[:40]}"
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        last = json.loads(line[len("data: "):])
                        self.started[name].set()
            return f"event: {last['error']['code']}" if last and "error" in last else "finished"

        self._record(name, work)

    def _whole(self, name: str) -> None:
        def work() -> str:
            response = post(self.url + "/v1/completions", LONG)
            if not response.text.strip():  # the heartbeat's spaces, then the connection ended
                return f"{response.status_code}: cut off"
            if not response.text.lstrip().startswith("{"):
                return f"{response.status_code}: {response.text[:40]}"
            body = json.loads(response.text)
            return f"{response.status_code}: {body['error']['code']}" if "error" in body else "finished"

        self._record(name, work)

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)
        assert not any(thread.is_alive() for thread in self.threads), f"requests still hanging: {self.outcomes}"


def recover(url: str, since: float, within: float = 600) -> tuple[float, list[str]]:
    """Seconds from `since` until a completion succeeds again, and what each try before it got (a try may wait:
    while no replica runs, Serve holds requests until its new replica serves)."""
    seen = []
    while time.monotonic() - since < within:
        sent = time.monotonic() - since
        try:
            response = post(url + "/v1/completions", {"prompt": "back", "max_tokens": 3}, timeout=within)
            if response.status_code == 200:
                if seen or time.monotonic() - since - sent > 5:  # a try that waited for the new replica
                    seen.append(f"200 (sent at {sent:.0f}s)")
                return time.monotonic() - since, seen
            code = response.json()["error"]["code"] if response.text.startswith("{") else response.text[:40]
            seen.append(f"{response.status_code} {code}")
        except httpx.HTTPError as error:
            seen.append(type(error).__name__)
        time.sleep(0.5)
    pytest.fail(f"not serving {within}s after the fault; tries got: {seen[-5:]}")


def report(name: str, seconds: float, seen: list[str]) -> None:
    counts = {outcome: seen.count(outcome) for outcome in dict.fromkeys(seen)}
    print(f"\n{name}: serving again {seconds:.1f}s after the kill; tries before: {counts}")


@pytest.mark.vllm
def test_a_killed_engine_ends_every_request_with_an_error_and_the_replica_is_replaced(engine, server, guarded):
    if engine != "vllm":
        pytest.skip("kills vLLM's EngineCore process")
    replica = replica_pid(server)
    cores = engine_cores(replica)
    assert len(cores) == 1, cores
    requests = InFlight(guarded)
    killed = time.monotonic()
    os.kill(cores[0], signal.SIGKILL)
    requests.join(30)
    assert len(requests.outcomes) == 4, requests.outcomes
    for name, (outcome, ended) in requests.outcomes.items():
        # A whole answer gets a 503, or its error body under the 200 its heartbeat began (two of the four wait in
        # the queue, max_ongoing_requests being 2, and reach the dead engine only then).
        expected = {"event: engine_dead"} if name.startswith("stream") else {"503: engine_dead", "200: engine_dead"}
        assert outcome in expected and ended - killed < 10, requests.outcomes
    seconds, seen = recover(guarded, killed)
    report("engine killed", seconds, seen)
    # Until Serve's health check replaces the replica, its live API answers every new request 503 engine_dead;
    # one sent while the new replica starts waits for it.
    assert "503 engine_dead" in seen and all(s == "503 engine_dead" or s.startswith("200") for s in seen), seen
    assert replica_pid(server) != replica


def test_a_killed_replica_ends_every_request_promptly_and_serve_replaces_it(server, guarded):
    recover(guarded, time.monotonic())  # a replica that serves, whatever an earlier test left
    replica = replica_pid(server)
    processes = running(descendants([replica]))  # the replica and its vLLM EngineCore
    requests = InFlight(guarded)
    killed = time.monotonic()
    os.kill(replica, signal.SIGKILL)
    requests.join(30)
    assert len(requests.outcomes) == 4, requests.outcomes
    for outcome, ended in requests.outcomes.values():
        # Nothing is left to write an error body. A response under way is cut off (the connection ends; a whole
        # answer's 200 and heartbeat spaces were sent, so its body is not JSON); one not yet begun (a request still
        # queued) gets HAProxy's own 502, which Serve's HAProxy config turns into a plain-text 500.
        assert (outcome.startswith("connection: ") or outcome in ("200: cut off", "500: Internal Server Error")), \
            requests.outcomes
        assert ended - killed < 10, requests.outcomes
    seconds, seen = recover(guarded, killed)
    report("replica killed", seconds, seen)
    # Each try is answered at once, or held until the new replica serves. With the app's only replica gone, Serve's
    # HAProxy answers 404 "Path ... not found" until the new one runs (Ray 2.60; more replicas keep serving).
    assert all(s.startswith(("200", "503", f"404 Path '{ROUTE}/")) for s in seen), seen
    assert replica_pid(server) != replica
    # The raylet kills the dead worker's process group (RAY_SERVING_ENV): no engine is left holding its memory.
    deadline = time.monotonic() + 15
    while (left := running(processes)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of the killed replica still running: {left}"
