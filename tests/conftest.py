from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from devtools.local_ray import LocalRay
from infra.serve_config import application
from serving_app.engines.registry import REGISTRY, EngineName, spec
from tests.engine_cases import available_engines, installed, serve_args

# The Pulumi program's tests belong to the main environment; the engine environments do not install Pulumi.
collect_ignore_glob = [] if importlib.util.find_spec("pulumi") else ["test_infra_*.py"]

ROUTE = "/llm"  # not "/": the API must work under a route prefix, as the cpu stack's /cpu and /acpu
REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine", action="append", default=None, choices=[engine.value for engine in REGISTRY],
        help="engine(s) the API suite runs against (default: the engines whose registry environment this is, "
             "or every engine importable here when this is none of them)",
    )


def this_environments_engines() -> list[EngineName]:
    """The registry's engines that run in the environment running pytest (none outside the project's venvs)."""
    here = Path(sys.prefix).resolve()
    return [engine for engine in REGISTRY if (REPO_ROOT / spec(engine).environment.venv).resolve() == here]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        requested = [EngineName(e) for e in metafunc.config.getoption("engine") or []]
        # An engine of this environment that does not import is a broken environment, not a reason to skip.
        engines = requested or this_environments_engines() or available_engines()
        missing = [e.value for e in engines if not installed(e)]
        if missing:
            raise pytest.UsageError(f"engine(s) {missing} requested but not installed in this environment")
        metafunc.parametrize("engine", [e.value for e in engines], scope="session")


@pytest.fixture
def mocks():
    """The Pulumi program's resources, recorded under mocks (fresh runtime state); pushed images get digests."""
    from infra.mocks import RecordingMocks, mocked

    with mocked(RecordingMocks(image_digests=True), stack="test") as recorder:
        yield recorder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama + trained tokenizer written by this environment's own transformers/tokenizers."""
    from devtools.tiny_llama import generate

    return generate(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def server(engine: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app deployed on a local Ray from a Serve config, as KubeRay deploys serveConfigV2."""
    ray = LocalRay(num_cpus=4)
    # Metrics exported every 2 s, not Ray's 10: the metrics tests wait for two exports after their traffic.
    ray.env["RAY_metrics_report_interval_ms"] = "2000"
    ray.start()
    try:
        args = serve_args(EngineName(engine), tiny_model, tmp_path_factory.mktemp(f"{engine}-work"))
        ray.serve.deploy(ray.serve_config([application("llm", ROUTE, args)]))
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


@pytest.fixture
def access_lines():
    """The access lines logged during the test, parsed."""
    found: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found.append(json.loads(record.getMessage()))

    handler = Collect()
    logging.getLogger("serving_app.access").addHandler(handler)
    yield found
    logging.getLogger("serving_app.access").removeHandler(handler)
