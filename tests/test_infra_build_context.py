"""Each image's build context holds only what its Dockerfile copies (with that image's build args) and is named by
paths relative to the repository, so an unrelated edit or another checkout leaves its digest alone. The hash here
follows pulumi-docker's hashContext: the Dockerfile's content, then every file its ignore file admits, by relative
path and content."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from infra import build_context
from infra.config import REPO_ROOT, load_stack
from infra.images import image_slug

ALL_BUILDS = {image_slug(hardware): spec for stack in ("gpu", "cpu") for hardware, spec in load_stack(stack).images.items()}
BUILD_ARGS = {"llm-serving-amd-gpu": {"BASE_IMAGE": "rocm/vllm:x@sha256:" + "0" * 64}}


def admitted(root: Path, ignore_file: Path) -> list[Path]:
    """The files of root an ignore file of the form build_context writes lets into the context."""
    lines = [line for line in ignore_file.read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*" and lines[-2:] == list(build_context.ALWAYS_IGNORED)
    included = [root / line[1:] for line in lines[1:-2]]
    files = []
    for path in included:
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [p for p in candidates if "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return files


def context_hash(root: Path, image: str) -> str:
    spec = ALL_BUILDS[image]
    dockerfile = root / build_context.prepare(image, spec.dockerfile, {**spec.build_args, **BUILD_ARGS.get(image, {})},
                                              root)
    digest = hashlib.sha256(dockerfile.read_bytes())
    for path in admitted(root, Path(str(dockerfile) + ".dockerignore")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """The files the images can copy, in a checkout of its own."""
    root = tmp_path / "checkout"
    for part in ("images", "requirements", "serving_app"):
        shutil.copytree(REPO_ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_each_image_context_is_what_its_dockerfile_copies(checkout):
    build_context.prepare("llm-serving-intel", "images/cpu/Dockerfile", {"ENGINE": "bigdl"}, checkout)
    ignore = checkout / ".cache/build-contexts/llm-serving-intel/Dockerfile.dockerignore"
    files = {str(p.relative_to(checkout)) for p in admitted(checkout, ignore)}
    assert "requirements/bigdl.txt" in files and "serving_app/api.py" in files
    assert not any(f.startswith("images/") or f == "requirements/onnxruntime.txt" for f in files)


def test_an_unrelated_edit_leaves_an_image_context_alone(checkout):
    def changed_by(path: str) -> set[str]:
        before = {image: context_hash(checkout, image) for image in ALL_BUILDS}
        (checkout / path).write_text((checkout / path).read_text() + "# edit\n")
        return {image for image in ALL_BUILDS if context_hash(checkout, image) != before[image]}

    assert changed_by("images/cpu/Dockerfile") == {"llm-serving-intel", "llm-serving-amd"}
    assert changed_by("requirements/onnxruntime.txt") == {"llm-serving-amd"}
    assert changed_by("images/nvidia/requirements.txt") == {"llm-serving-nvidia"}
    assert changed_by("serving_app/api.py") == set(ALL_BUILDS)


def test_the_context_hash_is_the_same_in_every_checkout(checkout, tmp_path):
    elsewhere = tmp_path / "another" / "place"
    shutil.copytree(checkout, elsewhere)
    assert {i: context_hash(checkout, i) for i in ALL_BUILDS} == {i: context_hash(elsewhere, i) for i in ALL_BUILDS}
