"""serveConfigV2 from the stack config: valid for Ray Serve's own schema; one application per route, of one model or of several."""

from __future__ import annotations

import pytest

from infra.config import load_stack
from infra.serve_config import serve_config
from tests.infra_helpers import STACKS


@pytest.mark.parametrize("stack", STACKS)
def test_serve_config_is_valid_for_ray_serve(stack):
    from ray.serve.schema import ServeDeploySchema

    config = load_stack(stack)
    rendered = serve_config(config)
    ServeDeploySchema.model_validate(rendered)
    assert rendered["http_options"]["port"] == config.serve.port
    assert [a["route_prefix"] for a in rendered["applications"]] == [a.route_prefix for a in config.serve.applications]
    assert all(a["import_path"] == "serving_app:typed_app_builder" for a in rendered["applications"])
