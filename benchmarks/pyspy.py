"""py-spy beside a benchmark's load: one recorder per process (100 Hz, active threads only, i.e. roughly CPU time,
without pausing the process), and the samples attributed by code owner. Used by profile_overhead.py (CPU VM) and
gpu_serving.py (GPU machine)."""

from __future__ import annotations

import collections
import subprocess
from pathlib import Path
from typing import Any

OWNERS = [  # (substring of the frame's file, owner); first match wins
    ("serving_app/", "serving_app (ours)"), ("bigdl/", "bigdl"), ("ray/serve/", "ray serve"), ("ray/", "ray core"),
    ("vllm/", "vllm"), ("starlette/", "starlette/fastapi/uvicorn"), ("fastapi/", "starlette/fastapi/uvicorn"),
    ("uvicorn/", "starlette/fastapi/uvicorn"), ("h11/", "starlette/fastapi/uvicorn"),
    ("httptools", "starlette/fastapi/uvicorn"), ("pydantic", "pydantic"), ("asyncio/", "asyncio/uvloop"),
    ("uvloop", "asyncio/uvloop"), ("grpc", "grpc"), ("transformers/", "transformers/tokenizers"),
    ("tokenizers", "transformers/tokenizers"), ("zmq", "zmq"), ("msgspec", "msgspec"), ("pickle", "serialization"),
    ("json/", "json"), ("logging/", "logging"), ("threading.py", "threading"),
    ("torch/", "torch"), ("onnxruntime/", "onnxruntime"), ("optimum/", "optimum"),
]


def owner(frame: str) -> str:
    for key, name in OWNERS:
        if key in frame:
            return name
    return "other"


def record(py_spy: str, pid: int, raw: Path, seconds: int) -> subprocess.Popen:
    """Start recording `pid` for `seconds` into `raw` (py-spy's collapsed-stack text); wait on the result."""
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--rate", "100", "--duration", str(seconds), "--format", "raw",
         "--output", str(raw), "--nonblocking"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(recorder: subprocess.Popen, raw: Path, timeout_s: float) -> dict[str, Any]:
    """Wait for one recorder; its attribution, or what it printed when it recorded nothing."""
    try:
        output, _ = recorder.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        recorder.kill()
        output, _ = recorder.communicate()
    if not raw.exists():
        return {"error": f"py-spy exited {recorder.returncode}: {(output or '').strip()[-500:]}"}
    return attribute(raw)


def attribute(raw: Path) -> dict[str, Any]:
    """Shares of samples by the owner of the innermost frame, plus the share with any serving_app frame."""
    leaf: collections.Counter = collections.Counter()
    inclusive_ours = total = 0
    top_leaf_frames: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        leaf[owner(frames[-1])] += n
        top_leaf_frames[frames[-1]] += n
        if any("serving_app/" in f for f in frames):
            inclusive_ours += n
    return {
        "samples": total,
        "leaf_share": {k: round(v / total, 3) for k, v in leaf.most_common()} if total else {},
        "inclusive_serving_app_share": round(inclusive_ours / total, 3) if total else None,
        "top_leaf_frames": [(f, round(v / total, 3)) for f, v in top_leaf_frames.most_common(15)] if total else [],
    }
