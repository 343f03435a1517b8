"""Every engine in the registry has what it needs to be built, deployed and tested: an environment that
scripts/setup_envs.sh creates, a serving image, an options model and an API-suite case. Forgetting one fails here.
No Ray, no model."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.config import CLUSTER_HARDWARE
from serving_app.engines.options import EngineOptions
from serving_app.engines.registry import EngineName, image_engine, spec
from tests.engine_cases import ENGINE_CASES

REPO_ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENTS = {line.split()[0]: line.split()[1:] for line in
                (REPO_ROOT / "requirements" / "environments.txt").read_text().splitlines() if line.strip()}


# Not named `engine`: conftest.py parametrizes that fixture with this environment's engines.
@pytest.mark.parametrize("name", list(EngineName), ids=lambda name: name.value)
def test_engine_has_an_environment_an_image_an_options_model_and_a_test_case(name: EngineName):
    entry = spec(name)
    environment = entry.environment
    assert ENVIRONMENTS.get(environment.name) == [environment.venv, *environment.requirements], (
        f"{name.value}: environment {environment.name!r} is not in requirements/environments.txt as the "
        "registry says")
    missing = [f for f in environment.requirements if not (REPO_ROOT / f).is_file()]
    assert not missing, f"{name.value}: requirement files missing: {missing}"
    assert entry.images, f"{name.value}: no serving image carries it (EngineSpec.images)"
    for hardware in entry.images:
        assert hardware in CLUSTER_HARDWARE and image_engine(hardware) is name, (
            f"{name.value}: the {hardware.value} image does not resolve to it")
    assert issubclass(entry.options, EngineOptions), f"{name.value}: its options are not an EngineOptions model"
    with pytest.raises(ValidationError):  # a typo in engine_kwargs fails at preview
        entry.options.model_validate({"surely_not_an_option": 1})
    assert name in ENGINE_CASES, f"{name.value}: no case in tests/engine_cases.py ENGINE_CASES"

