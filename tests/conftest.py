from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.engine_cases import ENGINE_CASES, available_engines


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine", action="append", default=None, choices=sorted(ENGINE_CASES),
        help="engine(s) the API suite runs against (default: every engine importable in this environment)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        engines = metafunc.config.getoption("engine") or available_engines()
        missing = [e for e in engines if importlib.util.find_spec(ENGINE_CASES[e][0]) is None]
        if missing:
            raise pytest.UsageError(f"engine(s) {missing} requested but not installed in this environment")
        metafunc.parametrize("engine", engines, scope="session")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama + trained tokenizer written by this environment's own transformers/tokenizers."""
    from serving_app.tiny_llama import generate

    return generate(tmp_path_factory.mktemp("models") / "tiny-llama")
