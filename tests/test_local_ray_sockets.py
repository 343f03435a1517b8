"""devtools.local_ray's reading of /proc: the sockets a process listens on, and the HAProxy wrapper's rewrite of
Serve's config. No Ray."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from devtools.local_ray import HAPROXY_WRAPPER, _write_haproxy_wrapper, listening_sockets


def test_listening_sockets_names_address_port_and_process():
    with socket.socket() as v4, socket.socket(socket.AF_INET6) as v6, socket.socket() as connected_only:
        v4.bind(("127.0.0.1", 0))
        v4.listen()
        v6.bind(("::", 0))
        v6.listen()
        connected_only.bind(("127.0.0.1", 0))  # bound, not listening: not reported
        mine = [s for s in listening_sockets([os.getpid()]) if s[1] in (v4.getsockname()[1], v6.getsockname()[1],
                                                                         connected_only.getsockname()[1])]
        assert mine == sorted([("127.0.0.1", v4.getsockname()[1], os.getpid()), ("::", v6.getsockname()[1], os.getpid())])


def test_the_haproxy_wrapper_puts_every_wildcard_bind_on_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    show = tmp_path / "real-haproxy"  # stands in for HAProxy: prints the config it is given (-f FILE)
    show.write_text('#!/bin/sh\ncat "$2"\n')
    show.chmod(0o755)
    monkeypatch.setattr("devtools.local_ray._real_haproxy", lambda python: str(show))
    _write_haproxy_wrapper(tmp_path, Path("python"))
    config = tmp_path / "haproxy.cfg"
    config.write_text("frontend prometheus\n    bind :9101\nfrontend http_frontend\n    bind 127.0.0.1:8000\n"
                      "listen stats\n  bind *:8404\n  bind 0.0.0.0:8405\n")
    shown = subprocess.run([str(tmp_path / HAPROXY_WRAPPER), "-f", str(config)], capture_output=True, text=True,
                           check=True).stdout
    assert shown == ("frontend prometheus\n    bind 127.0.0.1:9101\nfrontend http_frontend\n    bind 127.0.0.1:8000\n"
                     "listen stats\n  bind 127.0.0.1:8404\n  bind 127.0.0.1:8405\n")
