"""serveConfigV2 from the stack config: valid for Ray Serve's own schema; local overrides are revalidated."""

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


def test_serve_config_model_path_override_revalidates():
    config = load_stack("cpu")
    rendered = serve_config(config, model_path="/tmp/tiny-llama")
    for app in rendered["applications"]:
        assert app["args"]["model_name"] == "/tmp/tiny-llama"
        assert app["args"]["served_model_name"] == "meta-llama/Llama-2-7b-chat-hf"
    per_app = serve_config(config, model_path={"llama2-amd": "/tmp/onnx"})
    assert [a["args"]["model_name"] for a in per_app["applications"]] == ["meta-llama/Llama-2-7b-chat-hf", "/tmp/onnx"]
    with pytest.raises(ValueError, match=r"serve.applications\[0\].args.num_cpus"):
        serve_config(config, args_overrides={"num_cpus": -1})
