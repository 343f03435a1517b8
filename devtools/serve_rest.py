"""Serve's REST API on a Ray dashboard, the way KubeRay and `serve deploy` use it: PUT a Serve config and wait until
it serves. The one deployer of local mode, the tests and the benchmarks (on our own head or on a cluster's)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

FAILED = ("DEPLOY_FAILED", "UNHEALTHY")


class DeployError(RuntimeError):
    """Serve refused the config, an application failed, or it was not serving in time."""


def http_json(method: str, url: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, raw.decode(errors="replace")


def running_replicas(app: dict[str, Any]) -> dict[str, int]:
    """RUNNING replicas of each of the application's deployments (from its Serve status)."""
    return {name: sum(1 for replica in deployment.get("replicas", []) if replica.get("state") == "RUNNING")
            for name, deployment in (app.get("deployments") or {}).items()}


@dataclass(frozen=True)
class ServeREST:
    dashboard: str  # e.g. http://127.0.0.1:8265

    @property
    def _endpoint(self) -> str:
        return f"{self.dashboard}/api/serve/applications/"

    def applications(self) -> dict[str, Any]:
        """Serve's status of every application, by name."""
        status, body = http_json("GET", self._endpoint)
        if status != 200:
            raise DeployError(f"Ray dashboard at {self.dashboard} answered {status}: {body}")
        return (body or {}).get("applications", {})

    def put_config(self, config: dict[str, Any]) -> None:
        status, body = http_json("PUT", self._endpoint, config)
        if status != 200:
            raise DeployError(f"Serve refused the config ({status}): {body}")

    def delete(self, name: str) -> None:
        http_json("DELETE", f"{self._endpoint}{name}")

    def deploy(self, config: dict[str, Any], timeout: float = 600, *, any_replica: bool = False) -> dict[str, Any]:
        """PUT the config, then wait for its applications (see `wait`); returns their status."""
        self.put_config(config)
        return self.wait([app["name"] for app in config["applications"]], timeout, any_replica=any_replica)

    def wait(self, names: list[str], timeout: float = 600, *, any_replica: bool = False) -> dict[str, Any]:
        """Until every named application is RUNNING, or with `any_replica` until each of its deployments has a
        RUNNING replica: an application asking for more replicas than the machine holds stays DEPLOYING, yet
        serves. A failed application raises at once, with Serve's message."""
        deadline = time.time() + timeout
        while True:
            apps = self.applications()
            states = {name: apps.get(name, {}).get("status") for name in names}
            failed = {name: apps[name].get("message") for name, state in states.items() if state in FAILED}
            if failed:
                raise DeployError("application(s) failed:\n" + "\n".join(f"  {n}: {m}" for n, m in failed.items()))
            if any_replica:
                replicas = {name: running_replicas(apps.get(name, {})) for name in names}
                if all(counts and all(counts.values()) for counts in replicas.values()):
                    return apps
            elif all(state == "RUNNING" for state in states.values()):
                return apps
            if time.time() > deadline:
                raise DeployError(f"not serving after {timeout:.0f}s:\n" + "\n".join(
                    f"  {name}: {_describe(apps.get(name, {}))}" for name in names))
            time.sleep(2)


def _describe(app: dict[str, Any]) -> str:
    """An application's status with its deployments' (Serve says there why a replica cannot be scheduled)."""
    parts = [app.get("status") or "MISSING", app.get("message") or ""]
    for name, deployment in (app.get("deployments") or {}).items():
        parts.append(f"{name} {deployment.get('status')} {deployment.get('message') or ''}".rstrip())
    return "; ".join(part for part in parts if part)
