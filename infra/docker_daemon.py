"""Is there a Docker daemon the docker provider can use? Asked before any image build is declared, because the
provider pings the daemon when it starts (in `pulumi preview` too) and then fails with "failed to connect to any
docker daemon", which does not say that prebuilt images need no daemon at all.

Where it looks is the provider's (pulumi-docker's configureDockerClient): `docker:host` config, else DOCKER_HOST,
else the default socket and then Docker Desktop's two sockets under $HOME. An ssh:// host is not pinged by the
provider either (it is reached through the ssh helper when used).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

DEFAULT_HOST = "unix:///var/run/docker.sock"
TIMEOUT_S = 3.0


def candidate_hosts(configured: Optional[str]) -> list[str]:
    host = configured or os.environ.get("DOCKER_HOST")
    if host:
        return [host]
    home = Path.home()
    return [DEFAULT_HOST, f"unix://{home}/.docker/run/docker.sock", f"unix://{home}/.docker/desktop/docker.sock"]


def _ping(host: str) -> Optional[str]:
    """None if a daemon answers at host, else why not."""
    url = urlparse(host)
    try:
        if url.scheme == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(TIMEOUT_S)
                conn.connect(url.path)
                conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                answer = conn.recv(64).decode(errors="replace")
            return None if answer.split(" ")[1:2] == ["200"] else f"answered {answer.splitlines()[0]!r}"
        if url.scheme in ("tcp", "http", "https"):
            # TLS hosts need the client certificates to say more; a daemon that accepts connections is there.
            with socket.create_connection((url.hostname, url.port or 2375), timeout=TIMEOUT_S):
                return None
    except (OSError, IndexError) as error:
        return str(error) or type(error).__name__
    return f"unsupported scheme {url.scheme!r}"


def daemon_problem(configured: Optional[str] = None) -> Optional[str]:
    """None when the provider will find a daemon; else every place tried and what happened there."""
    hosts = candidate_hosts(configured)
    if urlparse(hosts[0]).scheme in ("ssh", "npipe"):
        return None  # not pinged by the provider (ssh), or not reachable with a plain socket (Windows pipes)
    tried = []
    for host in hosts:
        problem = _ping(host)
        if problem is None:
            return None
        tried.append(f"{host}: {problem}")
    return "; ".join(tried)
