"""The one deployer (devtools/serve_rest.py) against a fake dashboard: what it waits for, and that a failed or
refused deployment is an error that says why. No Ray, no model."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from devtools.serve_rest import DeployError, ServeREST

PENDING = "Deployment 'LLMServer' has 1 replica that has taken more than 30s to be scheduled: resources required"


class FakeDashboard:
    def __init__(self) -> None:
        self.applications: dict[str, Any] = {}
        self.put_status = 200
        self.received: list[Any] = []


@pytest.fixture
def dashboard() -> Iterator[tuple[FakeDashboard, ServeREST]]:
    fake = FakeDashboard()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._answer(200, {"applications": fake.applications})

        def do_PUT(self) -> None:
            fake.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self._answer(fake.put_status, {"error": "bad config"} if fake.put_status != 200 else None)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield fake, ServeREST(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()


def app_status(status: str, replicas: list[str], message: str = "") -> dict[str, Any]:
    return {"status": status, "message": "", "deployments": {"LLMServer": {
        "status": "UPSCALING" if status == "DEPLOYING" else "HEALTHY", "message": message,
        "replicas": [{"state": state} for state in replicas]}}}


CONFIG = {"applications": [{"name": "llm", "route_prefix": "/", "import_path": "x:y", "args": {}}]}


def test_deploy_puts_the_config_and_returns_once_every_application_is_running(dashboard):
    fake, serve = dashboard
    fake.applications = {"llm": app_status("RUNNING", ["RUNNING"])}
    assert serve.deploy(CONFIG, timeout=0)["llm"]["status"] == "RUNNING"
    assert fake.received == [CONFIG]


def test_any_replica_serves_an_application_whose_other_replicas_cannot_be_scheduled(dashboard):
    fake, serve = dashboard
    fake.applications = {"llm": app_status("DEPLOYING", ["RUNNING", "PENDING_ALLOCATION"], PENDING)}
    assert serve.wait(["llm"], timeout=0, any_replica=True)
    with pytest.raises(DeployError, match="not serving after 0s:\n  llm: DEPLOYING; LLMServer UPSCALING .*resources"):
        serve.wait(["llm"], timeout=0)


def test_no_running_replica_is_not_serving_even_with_any_replica(dashboard):
    fake, serve = dashboard
    fake.applications = {"llm": app_status("DEPLOYING", ["STARTING"])}
    with pytest.raises(DeployError, match="not serving"):
        serve.wait(["llm"], timeout=0, any_replica=True)
    fake.applications = {}
    with pytest.raises(DeployError, match="llm: MISSING"):
        serve.wait(["llm"], timeout=0, any_replica=True)


def test_a_failed_application_raises_with_serves_message(dashboard):
    fake, serve = dashboard
    fake.applications = {"llm": {**app_status("DEPLOY_FAILED", []), "message": "engine 'bigdl' is not available"}}
    with pytest.raises(DeployError, match="llm: engine 'bigdl' is not available"):
        serve.wait(["llm"], timeout=600)


def test_a_refused_config_raises_with_the_dashboards_answer(dashboard):
    fake, serve = dashboard
    fake.put_status = 400
    with pytest.raises(DeployError, match=r"Serve refused the config \(400\).*bad config"):
        serve.deploy(CONFIG)
