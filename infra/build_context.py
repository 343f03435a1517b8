"""Each image's build context: exactly what its Dockerfile COPYs with its build args, so a change to anything else
(another image's Dockerfile, the other CPU engine's requirements) leaves its context hash, digest and pods as they
are; and only paths relative to the repository root, so the hash is the same in every checkout.

pulumi-docker hashes the context through `<dockerfile>.dockerignore`, and two images built from one Dockerfile
(the CPU pair) need two ignore lists: each build gets a copy of its Dockerfile under .cache/build-contexts/<image>/
beside its own ignore file (the Dockerfile's content, not its path, goes into the hash). The checked-in
`images/*/Dockerfile.dockerignore` serve manual `docker build`s and admit every build's sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .dockerfile import copied_sources

CONTEXT_DIR = Path(".cache") / "build-contexts"
ALWAYS_IGNORED = ("**/__pycache__", "**/*.pyc")


def ignore_patterns(dockerfile: str, build_args: Mapping[str, str]) -> list[str]:
    """Everything out but what COPY takes (deduplicated, in Dockerfile order), caches out even there."""
    sources = list(dict.fromkeys(source.rstrip("/") for source in copied_sources(dockerfile, build_args)))
    return ["*", *(f"!{source}" for source in sources), *ALWAYS_IGNORED]


def prepare(image: str, dockerfile: str, build_args: Mapping[str, str], root: Path) -> str:
    """Write the image's Dockerfile copy and ignore file under root; return the copy's path relative to root."""
    text = (root / dockerfile).read_text()
    folder = root / CONTEXT_DIR / image
    folder.mkdir(parents=True, exist_ok=True)
    header = f"# Written by infra/build_context.py for {image}: what {dockerfile} COPYs with its build args.\n"
    (folder / "Dockerfile").write_text(text)
    (folder / "Dockerfile.dockerignore").write_text(header + "\n".join(ignore_patterns(text, build_args)) + "\n")
    return str(CONTEXT_DIR / image / "Dockerfile")
