"""Local mode's Ray head is reachable from this machine only, and going down leaves nothing behind: the listening
sockets of every process of a head serving the app (HAProxy ingress, a vLLM replica), then every process and port
after `local down`'s stop (from the saved state, as another process does it)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from devtools.local_ray import HEAD_MARKER, LocalRay, listening_sockets, pids_using
from infra.serve_config import application
from serving_app.engines.registry import EngineName
from tests.engine_cases import serve_args

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def every_process() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def test_every_port_is_on_loopback_and_down_leaves_no_process(tiny_model, tmp_path):
    ray = LocalRay(num_cpus=2).start()
    state = ray.state()
    try:
        args = {**serve_args(EngineName.VLLM, tiny_model, tmp_path), "max_model_len": 512,
                "engine_kwargs": {"kv_cache_memory_bytes": 64 * 2**20}}
        ray.serve.deploy(ray.serve_config([application("isolated", "/isolated", args)]))
        pids = ray.processes()
        sockets = listening_sockets(pids)
        ports = {port for _, port, _ in sockets}
        assert {ray.gcs_port, ray.dashboard_port, ray.serve_port} <= ports
        assert any("ray.util.client.server" in command(pid) for _, _, pid in sockets)  # the client server, too
        assert any("haproxy" in command(pid) for _, _, pid in sockets)
        exposed = [(address, port, command(pid)[:60]) for address, port, pid in sockets if not loopback(address)]
        replicas = [pid for pid in pids if command(pid).startswith("ray::ServeReplica")]
        # The one exception, Ray's and not ours: each Serve replica's inter-deployment gRPC server, bound to
        # "[::]:0" in Ray 2.60 (serve/_private/replica.py) with no setting to change it.
        assert len(exposed) == len(replicas) == 1, exposed
        assert exposed[0][0] == "::" and exposed[0][2].startswith("ray::ServeReplica"), exposed
    finally:
        LocalRay.from_state(state).stop()
    marker = str(ray.temp_dir).encode()
    left = [pid for pid in every_process()
            if marker in command(pid).encode() or f"127.0.0.1:{ray.gcs_port}" in command(pid)]
    assert left == [] and pids_using(ray.temp_dir) == [], [command(pid)[:100] for pid in left]
    still_listening = [s for s in listening_sockets(every_process()) if s[1] in ports]
    assert still_listening == [], still_listening
    assert not ray.temp_dir.exists()
    assert HEAD_MARKER in ray.env
