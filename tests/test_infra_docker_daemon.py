"""Preview without a Docker daemon: with every image prebuilt the program declares nothing of the docker provider
(which pings the daemon as it starts); with images to build and no daemon, the error says how to go without one."""

from __future__ import annotations

import runpy
import socket
import threading
from pathlib import Path

import pulumi
import pytest

from infra import docker_daemon, program
from infra.config import REPO_ROOT
from tests.infra_helpers import parse_document, pulumi_config, stack_document, with_values

DIGEST = "sha256:" + "c" * 64


def prebuilt(values):
    values["images"] = {hw: {"reference": f"registry.example.com/{hw.lower()}@{DIGEST}", "rayVersion": "2.60.0",
                             "pythonVersion": "3.11"} for hw in ("INTEL", "AMD")}
    values.pop("registry")


@pytest.fixture
def daemon(tmp_path):
    """A socket answering /_ping as dockerd does."""
    path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve():
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")

    threading.Thread(target=serve, daemon=True).start()
    yield f"unix://{path}"
    server.close()


def test_a_daemon_that_answers_is_found(daemon):
    assert docker_daemon.daemon_problem(daemon) is None


def test_no_daemon_names_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(docker_daemon.Path, "home", lambda: tmp_path)
    monkeypatch.setattr(docker_daemon, "DEFAULT_HOST", f"unix://{tmp_path}/var-run-docker.sock")
    problem = docker_daemon.daemon_problem()
    assert [part.split(": ")[0] for part in problem.split("; ")] == [
        f"unix://{tmp_path}/var-run-docker.sock", f"unix://{tmp_path}/.docker/run/docker.sock",
        f"unix://{tmp_path}/.docker/desktop/docker.sock"]
    # DOCKER_HOST (as the provider reads it) replaces the defaults; an ssh host is never pinged.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/elsewhere.sock")
    assert docker_daemon.daemon_problem().startswith(f"unix://{tmp_path}/elsewhere.sock: ")
    assert docker_daemon.daemon_problem("ssh://builder@build.example.com") is None


def test_building_without_a_daemon_says_what_to_do():
    stack = parse_document(stack_document("cpu"))
    with pytest.raises(pulumi.RunError) as error:
        program.require_docker_daemon(stack, probe=lambda host: "unix:///var/run/docker.sock: No such file")
    message = str(error.value)
    assert message.startswith("images.INTEL, images.AMD are built from Dockerfiles, which needs a Docker daemon, and "
                              "none answers (unix:///var/run/docker.sock: No such file)")
    assert "give each a prebuilt reference instead of its dockerfile" in message
    assert "preview and up then need no daemon" in message


def test_prebuilt_images_need_no_daemon():
    stack = parse_document(with_values("cpu", prebuilt))
    program.require_docker_daemon(stack, probe=lambda host: pytest.fail("asked for a daemon"))


@pulumi.runtime.test
def test_prebuilt_images_declare_nothing_of_the_docker_provider(mocks):
    pulumi.runtime.set_all_config(pulumi_config(with_values("cpu", prebuilt)), [])
    deployment = program.main()

    def check(_):
        assert mocks.resources and [r.type for r in mocks.resources if r.type.startswith("docker:")] == []

    return deployment.ray_service.ray_service.urn.apply(check)


def test_the_cli_entry_point_checks_for_the_daemon(monkeypatch):
    calls = []
    monkeypatch.setattr(program, "main", lambda **kwargs: calls.append(kwargs))
    runpy.run_path(str(Path(REPO_ROOT) / "__main__.py"))
    assert calls == [{"check_docker_daemon": True}]
