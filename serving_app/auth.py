"""API keys: `Authorization: Bearer <key>` (what the `openai` SDK sends as `api_key`), checked in constant time.

The keys reach each replica in the environment variable API_KEYS, comma-separated so a new key can be added before
the old one is removed (rotation). In the cluster it comes from a Kubernetes Secret; it never sits in a serve
config. Without keys the API is open, which the replica logs as a warning at start.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Iterable, Mapping, Optional

from .api import APIError

ENV = "API_KEYS"


def _digest(value: bytes) -> bytes:
    # Digests have one length, so comparing them reveals neither a key's content nor its length.
    return hashlib.sha256(value).digest()


class APIKeys:
    def __init__(self, keys: Iterable[str]):
        digests = []
        for number, key in enumerate((key.strip() for key in keys), start=1):
            if not key:
                continue
            if not key.isascii() or not key.isprintable() or " " in key:
                # The key itself is never repeated: it may be a real one with a typo.
                raise ValueError(f"{ENV}: key {number} has spaces or characters an HTTP header cannot carry")
            digests.append(_digest(key.encode()))
        self._digests = tuple(digests)

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "APIKeys":
        return cls((os.environ if environ is None else environ).get(ENV, "").split(","))

    @property
    def required(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: Optional[bytes]) -> None:
        """Raise a 401 APIError unless the Authorization header's bearer token is one of the keys."""
        if not self._digests:
            return
        scheme, _, token = (authorization or b"").strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise _unauthorized("missing API key: send it as `Authorization: Bearer <key>` (the openai SDK's api_key)")
        given = _digest(token)
        matched = False
        for digest in self._digests:  # every key, always: the time taken does not say which one matched
            matched |= hmac.compare_digest(digest, given)
        if not matched:
            raise _unauthorized("incorrect API key provided")


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
