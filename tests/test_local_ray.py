"""The private Ray head behind local mode and the tests: Ray's token authentication must not lock it out."""

from __future__ import annotations

import pytest

from devtools.local_ray import LocalRay, local_ray
from devtools.serve_rest import http_json

pytestmark = pytest.mark.e2e


@pytest.fixture
def saved_ray_token(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """What any earlier local `ray.init()` leaves in ~/.ray/auth_token (pointed at by Ray's own variable)."""
    token = tmp_path / "auth_token"
    token.write_text("0" * 64)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    return token


def test_a_saved_ray_token_does_not_lock_the_local_head_out(saved_ray_token):
    with local_ray(num_cpus=1) as ray:
        status, body = http_json("GET", f"{ray.dashboard}/api/serve/applications/")
        assert status == 200, body


def test_token_auth_asked_for_explicitly_fails_fast_and_cleans_up(saved_ray_token, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    ray = LocalRay(num_cpus=1)
    with pytest.raises(RuntimeError, match="RAY_AUTH_MODE is 'token' here; a local head needs it 'disabled'"):
        ray.start()
    assert ray.processes() == []
