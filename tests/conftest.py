from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine_cases import ENGINE_CASES, available_engines, installed, serve_args
from tests.serving import LocalRay, application

ROUTE = "/llm"  # not "/": the API must work under a route prefix, as the cpu stack's /cpu and /acpu


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine", action="append", default=None, choices=sorted(ENGINE_CASES),
        help="engine(s) the API suite runs against (default: every engine importable in this environment)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        engines = metafunc.config.getoption("engine") or available_engines()
        missing = [e for e in engines if not installed(ENGINE_CASES[e][0])]
        if missing:
            raise pytest.UsageError(f"engine(s) {missing} requested but not installed in this environment")
        metafunc.parametrize("engine", engines, scope="session")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama + trained tokenizer written by this environment's own transformers/tokenizers."""
    from devtools.tiny_llama import generate

    return generate(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def server(engine: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app deployed on a local Ray from a Serve config, as KubeRay deploys serveConfigV2."""
    ray = LocalRay(num_cpus=4).start()
    try:
        args = serve_args(engine, tiny_model, tmp_path_factory.mktemp(f"{engine}-work"))
        ray.deploy(ray.serve_config([application("llm", ROUTE, args)]))
        yield ray
    finally:
        ray.stop()


@pytest.fixture
def base_url(server: LocalRay) -> str:
    return server.url(ROUTE)


@pytest.fixture
def client(base_url: str):
    import openai

    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0, timeout=120)
