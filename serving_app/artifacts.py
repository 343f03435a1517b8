"""Directories built once and then reused: BigDL-LLM's low-bit model cache and converted ONNX models.

A builder writes into a staging directory beside the final place, seals it with a marker that lists every file and
its size, and renames it into place in one step, so readers (another replica on the same model volume, the next
start) see a finished directory or none. A directory whose marker is missing, unreadable, from another source, or
whose files do not match it is partial or stale: it is discarded and rebuilt. Only the standard library here:
engines and `serving_app.convert` use it in every image.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger("ray.serve")

MARKER = "serving_app_artifact.json"
FORMAT = 1
# A staging directory this old belongs to a writer that died (a 70B conversion takes well under a day).
STALE_STAGING_S = 24 * 3600


class ArtifactError(RuntimeError):
    """A directory that should hold a sealed artifact does not."""


def staging_dir(final: Path) -> Path:
    """A fresh directory on final's filesystem (so the closing rename is atomic); removes dead writers' leftovers."""
    final.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            if now - old.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def _files(directory: Path) -> dict[str, int]:
    return {
        path.relative_to(directory).as_posix(): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MARKER
    }


def seal(directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Flush every file to disk and write the marker last; readable by others (mkdtemp makes 0700)."""
    for path in directory.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
        else:
            path.chmod(0o644)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    directory.chmod(0o755)
    record = {"format": FORMAT, "build_id": uuid.uuid4().hex, **meta, "files": _files(directory)}
    marker = directory / MARKER
    with open(marker, "w") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    marker.chmod(0o644)
    return record


def inspect(directory: Path, expect: Optional[dict[str, Any]] = None) -> tuple[Optional[dict[str, Any]], str]:
    """(marker, "") when directory is a complete artifact whose marker matches `expect`; else (None, why not)."""
    marker = directory / MARKER
    if not directory.is_dir():
        return None, "absent"
    try:
        record = json.loads(marker.read_text())
    except FileNotFoundError:
        return None, f"no {MARKER} (partial or written by something else)"
    except (OSError, ValueError) as error:
        return None, f"unreadable {MARKER}: {error}"
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("files"), dict):
        return None, f"{MARKER} has an unknown format"
    for key, value in (expect or {}).items():
        if record.get(key) != value:
            return None, f"built for {key}={record.get(key)!r}, need {value!r}"
    for name, size in record["files"].items():
        path = directory / name
        try:
            actual = path.stat().st_size
        except OSError:
            return None, f"file {name} is missing"
        if actual != size:
            return None, f"file {name} has {actual} bytes, the marker says {size}"
    return record, ""


def discard(directory: Path, build_id: Optional[str] = None) -> None:
    """Move a bad artifact out of the way, then delete it. With build_id, only if it is still that build: another
    replica may have replaced it with a good one meanwhile."""
    if build_id is not None:
        try:
            if json.loads((directory / MARKER).read_text()).get("build_id") != build_id:
                return
        except (OSError, ValueError):
            pass
    aside = directory.parent / f".{directory.name}.stale-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(directory, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def publish(staging: Path, final: Path, expect: Optional[dict[str, Any]] = None) -> Path:
    """Rename a sealed staging directory to final. When another writer published a complete one first, keep theirs
    and drop ours; an incomplete one in the way is discarded."""
    for _ in range(5):
        try:
            os.rename(staging, final)  # atomic; replaces only an empty directory
            return final
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
        record, why = inspect(final, expect)
        if record is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return final
        logger.warning("replacing incomplete artifact %s (%s)", final, why)
        discard(final)
    raise ArtifactError(f"could not publish {staging} as {final}: it keeps being replaced")


def source_fingerprint(model_name: str) -> dict[str, Any]:
    """What a cache built from a model depends on: a local model's top-level files (size and modification time:
    replaced weights of the same shape change the time), or a hub id."""
    path = Path(model_name)
    if not path.is_dir():
        return {"source": model_name}
    files = {}
    for item in sorted(path.iterdir()):
        if item.is_file() and not item.name.startswith("."):
            stat = item.stat()
            files[item.name] = [stat.st_size, stat.st_mtime_ns]
    return {"source": str(path.resolve()), "source_files": files}


def _slug(model_name: str) -> str:
    path = Path(model_name)
    identity = str(path.resolve()) if path.exists() else model_name
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in path.name or model_name).strip(".-") or "model"
    return f"{name}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


def _writable_dir(directory: Path) -> bool:
    try:
        directory.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def cache_location(model_name: str, kind: str, variant: str, override: Optional[str] = None) -> Path:
    """Where a derived model lives: `<override>/<model>/<variant>` when configured, else next to a local model
    (`<model>/.<kind>-cache/<variant>`, on the shared model volume). Hub ids (and read-only model directories) go
    beside the hub cache when HF_HOME is set (the cluster points it at the model volume), else the user cache."""
    if override:
        return Path(override).expanduser() / _slug(model_name) / variant
    local = Path(model_name)
    if local.is_dir() and _writable_dir(local / f".{kind}-cache"):
        return local / f".{kind}-cache" / variant
    root = os.environ.get("HF_HOME") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "serving_app" / kind / _slug(model_name) / variant
