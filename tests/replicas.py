"""The processes behind an application's replica on a local Ray head: for the fault tests, which kill them."""

from __future__ import annotations

from pathlib import Path

from devtools.local_ray import LocalRay, descendants


def running_replicas(ray: LocalRay, application: str, deployment: str = "LLMServer") -> list[int]:
    """The pids of the application's running replicas (none while Serve replaces them)."""
    replicas = ray.serve.applications().get(application, {}).get("deployments", {}).get(deployment, {})
    return [replica["pid"] for replica in replicas.get("replicas", []) if replica["state"] == "RUNNING"]


def replica_pid(ray: LocalRay, application: str, deployment: str = "LLMServer") -> int:
    """The pid of the application's one running replica."""
    pids = running_replicas(ray, application, deployment)
    assert len(pids) == 1, ray.serve.applications().get(application)
    return pids[0]


def running(pids: list[int]) -> list[int]:
    """Those of these processes still running (a zombie's cmdline is empty)."""
    alive = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes():
                alive.append(pid)
        except OSError:
            continue
    return alive


def engine_cores(replica: int) -> list[int]:
    """The vLLM EngineCore processes the replica started (alive)."""
    cores = []
    for pid in running(descendants([replica])):
        try:
            if b"EngineCore" in Path(f"/proc/{pid}/cmdline").read_bytes():
                cores.append(pid)
        except OSError:
            continue
    return cores
