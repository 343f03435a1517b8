"""The access lines replicas of a local Ray head wrote (serving_app/access_log.py: JSON on each worker's stderr)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from devtools.local_ray import LocalRay


def worker_logs(ray: LocalRay) -> Path:
    return ray.temp_dir / "session_latest" / "logs"


def log_offsets(logs: Path) -> dict[Path, int]:
    """Where each worker's stderr file ends now: access_lines after it reads only what comes later."""
    return {path: path.stat().st_size for path in logs.glob("worker-*.err")}


def access_lines(logs: Path, offsets: dict[Path, int], application: str) -> list[dict[str, Any]]:
    """The access lines of `application` written after `offsets` (per worker stderr file)."""
    found = []
    for path in sorted(logs.glob("worker-*.err")):
        with open(path, "rb") as file:
            file.seek(offsets.get(path, 0))
            for raw in file.read().decode("utf-8", "replace").splitlines():
                if raw.startswith('{"log": "access"'):
                    line = json.loads(raw)
                    if line["application"] == application:
                        found.append(line)
    return found
