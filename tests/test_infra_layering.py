"""What each infra module may import: the config, checks and manifest builder run without Pulumi (render, local
tooling), and the manifest builder does not depend on the checks that inspect its output."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module, forbidden", [
    ("infra.stack_sections", ["pulumi", "infra.config"]),
    ("infra.config", ["pulumi"]),
    ("infra.dockerfile", ["pulumi", "infra.config"]),
    ("infra.checks", ["pulumi"]),
    ("infra.serve_config", ["pulumi"]),
    ("infra.manifests", ["pulumi", "infra.checks", "infra.dockerfile"]),
])
def test_module_imports_without(module, forbidden):
    code = (f"import sys, {module}; bad = [m for m in {forbidden!r} if m in sys.modules]; "
            f"assert not bad, f'{module} imports {{bad}}'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
