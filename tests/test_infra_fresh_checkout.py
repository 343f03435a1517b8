"""A fresh clone's `pulumi up`: Pulumi.yaml's toolchain creates the virtualenv and installs the project root's
requirements.txt into it (pulumi-language-python, toolchain pip: EnsureVenv -> InstallDependencies, `pip install -r
requirements.txt` in the program directory, nothing when the file is missing). That file must hold everything the
program imports."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from infra.config import REPO_ROOT

REQUIREMENTS = REPO_ROOT / "requirements.txt"
PROJECT_PACKAGES = {"infra", "serving_app", "devtools", "tests"}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", f"{path.name}: {line} is not pinned"
            found[_key(requirement.name)] = spec.version
    return found


def closure(names: list[str]) -> set[str]:
    """The distributions installing `names` brings (the installed metadata's requirements, no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if _key(name) in seen:
            continue
        seen.add(_key(name))
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def program_imports() -> set[str]:
    """Top-level modules outside the project that the program's own files import, as `pulumi up` loads them."""
    code = ("import sys, infra.program, infra.render; "
            "print('\\n'.join(getattr(m, '__file__', None) or '' for m in list(sys.modules.values())))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                            timeout=120).stdout.split()
    files = [f for f in loaded if f.endswith(".py") and Path(f).is_relative_to(REPO_ROOT)
             and Path(f).relative_to(REPO_ROOT).parts[0] in PROJECT_PACKAGES]
    names = set()
    for file in files:
        # Module-level imports run when the program loads; an engine library imported inside a function does not.
        body = ast.parse(Path(file).read_text()).body
        for node in body + [n for t in body if isinstance(t, ast.Try) for n in t.body]:
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return {name for name in names - PROJECT_PACKAGES if name not in sys.stdlib_module_names}


def test_pulumi_installs_the_root_requirements_into_its_virtualenv():
    options = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())["runtime"]["options"]
    assert options == {"toolchain": "pip", "virtualenv": ".venv"}
    assert "main" not in yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text()), "the program directory is the root"
    assert REQUIREMENTS.is_file()


def test_root_requirements_hold_every_import_of_the_program():
    pinned = pins(REQUIREMENTS)
    installed = closure(list(pinned))
    distributions = metadata.packages_distributions()
    missing = {module: distributions.get(module) for module in program_imports()
               if not {_key(d) for d in distributions.get(module, [module])} & installed}
    assert missing == {}, "imported by the program but not installed by requirements.txt"


def test_root_and_test_environment_pins_agree():
    test_env = pins(REPO_ROOT / "requirements" / "infra.txt")
    assert {name: version for name, version in pins(REQUIREMENTS).items() if name in test_env} == \
        {name: test_env[name] for name in pins(REQUIREMENTS) if name in test_env}


@pytest.mark.e2e
def test_a_fresh_virtualenv_from_requirements_runs_the_program(tmp_path):
    """What `pulumi up` does on a fresh clone, then the program under render (no cluster, no CLI). Needs PyPI."""
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = str(env / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                              str(REQUIREMENTS)], capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-4000:]
    rendered = subprocess.run([python, "-m", "infra", "render", "--stack", "gpu", "--out", str(tmp_path / "out")],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert rendered.returncode == 0, rendered.stderr[-4000:]
    assert any(line.endswith("rayservice-llm-serving.yaml") for line in rendered.stdout.split())
