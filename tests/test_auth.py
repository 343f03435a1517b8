"""API keys (serving_app.auth): the bearer check, rotation, the 401 body, constant-time comparison. No Ray."""

from __future__ import annotations

import json

import pytest

from serving_app import auth
from serving_app.errors import APIError, as_api_error, error_response
from serving_app.auth import APIKeys
from tests.secret_volume import update_secret_file


def refused(keys: APIKeys, header: bytes | None) -> APIError:
    with pytest.raises(APIError) as error:
        keys.check(header)
    return error.value


def test_every_configured_key_is_accepted_so_keys_can_be_rotated():
    keys = APIKeys.from_env({"API_KEYS": "old-key-123, new-key-456,"})
    assert keys.required
    keys.check(b"Bearer old-key-123")
    keys.check(b"bearer new-key-456")  # the scheme is case-insensitive (RFC 9110)
    keys.check(b"Bearer  new-key-456 ")


@pytest.mark.parametrize("header", [None, b"", b"Bearer", b"Bearer ", b"Basic old-key-123", b"old-key-123",
                                    b"Bearer wrong", b"Bearer old-key-12", b"Bearer old-key-1234"])
def test_a_missing_or_wrong_key_is_a_401_with_an_openai_body(header):
    error = refused(APIKeys(["old-key-123"]), header)
    status, body = error_response(error)
    assert status == 401
    data = json.loads(body.model_dump_json())
    assert data["error"]["type"] == "invalid_request_error" and data["error"]["code"] == "invalid_api_key"
    assert "old-key-123" not in data["error"]["message"]
    assert as_api_error(error).headers == {"WWW-Authenticate": "Bearer"}


def test_the_message_says_how_to_send_a_key_when_none_came():
    assert "Authorization: Bearer" in refused(APIKeys(["k" * 20]), None).message
    assert refused(APIKeys(["k" * 20]), b"Bearer nope").message == "incorrect API key provided"


def test_without_keys_the_api_is_open():
    keys = APIKeys.from_env({})
    assert not keys.required
    keys.check(None)
    assert not APIKeys.from_env({"API_KEYS": " , "}).required


@pytest.mark.parametrize("bad", ["white space-key", "tab\tkey", "nön-ascii"])
def test_a_key_no_header_can_carry_is_refused_at_start_without_repeating_it(bad):
    with pytest.raises(ValueError) as error:
        APIKeys.from_env({"API_KEYS": f"fine-key,{bad}"})
    assert "API_KEYS: key 2" in str(error.value)
    assert bad not in str(error.value)


def test_every_key_is_compared_even_after_a_match(monkeypatch):
    compared = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    APIKeys(["first-key", "second-key-longer", "third"]).check(b"Bearer first-key")
    # One comparison per key, all of digests (one length): neither which key matched nor its length shows.
    assert compared == [(32, 32)] * 3


# ---- keys from a mounted Secret, rotated while the replica runs ------------------------------------------


def bearer(key: str) -> bytes:
    return f"Bearer {key}".encode()


def rejected(keys, key: str) -> bool:
    try:
        keys.check(bearer(key))
    except APIError as error:
        assert error.status == 401
        return True
    return False


def test_keys_from_a_file_follow_a_rotation_without_a_restart(tmp_path, caplog):
    update_secret_file(tmp_path, "API_KEYS", "old-key")
    keys = APIKeys.from_env({"API_KEYS_FILE": str(tmp_path / "API_KEYS"), "API_KEYS": "ignored"})
    keys.reload_every_s = 0
    assert not rejected(keys, "old-key") and rejected(keys, "ignored")
    update_secret_file(tmp_path, "API_KEYS", "old-key,new-key")  # step 1 of a rotation: both
    assert not rejected(keys, "old-key") and not rejected(keys, "new-key")
    update_secret_file(tmp_path, "API_KEYS", "new-key")  # step 2: the old one goes
    assert rejected(keys, "old-key") and not rejected(keys, "new-key")
    # A broken or empty update changes nothing: neither an open API nor every client locked out.
    for bad in ("", " , ", "new key with spaces"):
        update_secret_file(tmp_path, "API_KEYS", bad)
        assert rejected(keys, "old-key") and not rejected(keys, "new-key")
    assert caplog.text.count("previous keys stay") == 3


def test_the_file_is_looked_at_only_every_few_seconds(tmp_path, monkeypatch):
    update_secret_file(tmp_path, "API_KEYS", "old-key")
    keys = auth.APIKeyFile(tmp_path / "API_KEYS", reload_every_s=60)
    update_secret_file(tmp_path, "API_KEYS", "new-key")
    assert not rejected(keys, "old-key")  # within the interval: not re-read yet
    monkeypatch.setattr(auth.time, "monotonic", lambda: 10**9)
    assert rejected(keys, "old-key") and not rejected(keys, "new-key")


def test_a_key_file_without_a_key_is_refused_at_start(tmp_path):
    (tmp_path / "API_KEYS").write_text(" ,")
    with pytest.raises(ValueError, match="holds no key"):
        APIKeys.from_env({"API_KEYS_FILE": str(tmp_path / "API_KEYS")})
    with pytest.raises(FileNotFoundError):
        APIKeys.from_env({"API_KEYS_FILE": str(tmp_path / "missing")})
