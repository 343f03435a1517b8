"""requirements/environments.txt, which scripts/setup_envs.sh reads (it runs before any environment exists, so it
cannot ask the registry), is the registry's own list. No Ray, no model."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from serving_app.engines.registry import main as registry_main

ENVIRONMENTS_FILE = Path(__file__).resolve().parents[1] / "requirements" / "environments.txt"


def test_the_environments_file_is_the_registrys_list():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert registry_main(["envs"]) == 0
    assert ENVIRONMENTS_FILE.read_text() == out.getvalue(), (
        "requirements/environments.txt is stale: python -m serving_app.engines.registry envs "
        "> requirements/environments.txt")
