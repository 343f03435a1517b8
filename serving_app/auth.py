"""API keys: `Authorization: Bearer <key>` (what the `openai` SDK sends as `api_key`), checked in constant time.

Keys are comma-separated, so a new key can be added before the old one is removed (rotation). A replica reads them
from the file named by API_KEYS_FILE (in the cluster: the Kubernetes Secret mounted as a volume, which the kubelet
updates in place when the Secret changes, so a rotation reaches running replicas within a minute or two without a
restart), else from the environment variable API_KEYS (fixed for the replica's life: local mode, tests). They never
sit in a serve config. Without keys the API is open, which the replica logs as a warning at start.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from .errors import APIError

ENV = "API_KEYS"
FILE_ENV = "API_KEYS_FILE"
RELOAD_EVERY_S = 5.0  # how often a request may look at the key file (one stat)

logger = logging.getLogger("ray.serve")


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
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Keys":
        """The replica's keys: the file API_KEYS_FILE names (re-read as it changes), else API_KEYS."""
        environ = os.environ if environ is None else environ
        if environ.get(FILE_ENV):
            return APIKeyFile(Path(environ[FILE_ENV]))
        return cls(environ.get(ENV, "").split(","))

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


class APIKeyFile:
    """Keys from a file, re-read when it changes (looked at no more than every RELOAD_EVERY_S). A change that holds
    no valid key is refused and logged, and the keys before it stay: a bad rotation never opens the API or locks
    every client out. The file must hold at least one valid key when the replica starts."""

    def __init__(self, path: Path, reload_every_s: float = RELOAD_EVERY_S):
        self.path = path
        self.reload_every_s = reload_every_s
        self._lock = threading.Lock()
        self._seen = self._stamp()
        self._checked = time.monotonic()
        self._keys = self._read()
        if not self._keys.required:
            raise ValueError(f"{FILE_ENV}: {path} holds no key")

    def _stamp(self) -> tuple[int, int]:
        stat = self.path.stat()  # follows the kubelet's ..data symlink to the current version of the file
        return stat.st_ino, stat.st_mtime_ns

    def _read(self) -> APIKeys:
        return APIKeys(self.path.read_text().split(","))

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.reload_every_s:
            return
        with self._lock:
            self._checked = now
            try:
                stamp = self._stamp()
                if stamp == self._seen:
                    return
                keys = self._read()
            except OSError as error:  # mid-update: looked at again next time
                logger.error("API keys not reloaded from %s, the previous keys stay: %s", self.path, error)
                return
            except ValueError as error:  # a key an HTTP header cannot carry
                self._seen = stamp  # said once per version of the file
                logger.error("API keys not reloaded from %s, the previous keys stay: %s", self.path, error)
                return
            self._seen = stamp
            if not keys.required:
                logger.error("API keys not reloaded: %s now holds no key; the previous keys stay", self.path)
                return
            self._keys = keys
            logger.info("API keys reloaded from %s", self.path)

    @property
    def required(self) -> bool:
        return True

    def check(self, authorization: Optional[bytes]) -> None:
        self._refresh()
        self._keys.check(authorization)


Keys = Union[APIKeys, APIKeyFile]  # what the guard checks requests with


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
