"""serveConfigV2 from the typed stack config: one pure function, shared by the RayService, render and local mode."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import yaml

from serving_app.serve_args import parse_serve_args

from .config import StackConfig

IMPORT_PATH = "serving_app:typed_app_builder"


def serve_config(
    stack: StackConfig,
    *,
    model_path: Union[str, Mapping[str, str], None] = None,
    args_overrides: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """The Serve config the RayService carries.

    `model_path` (one path for every app, or app name -> path) and `args_overrides` re-point the same config at
    other weights or sizes, e.g. a generated tiny model on a local Ray; the result is re-validated by `ServeArgs`.
    """
    applications = []
    for index, app in enumerate(stack.serve.applications):
        # Resolved args (engine, data type, GPU count...) minus defaults: the config says what runs, briefly.
        args = app.args.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        path = model_path.get(app.name) if isinstance(model_path, Mapping) else model_path
        if path is not None or args_overrides:
            changed = {**args, **(args_overrides or {})}
            if path is not None:
                changed["model_name"] = path  # served_model_name keeps the hub id clients already use
            args = parse_serve_args(changed, f"serve.applications[{index}].args").model_dump(
                mode="json", exclude_none=True, exclude_defaults=True)
        entry: dict[str, Any] = {
            "name": app.name,
            "route_prefix": app.route_prefix,
            "import_path": IMPORT_PATH,
            "args": args,
        }
        if app.runtime_env:
            entry["runtime_env"] = dict(app.runtime_env)
        applications.append(entry)
    return {
        # A proxy on every node: the serve Service reaches whichever pod it picks (KubeRay marks ready ones).
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": stack.serve.port},
        "applications": applications,
    }


def serve_config_yaml(stack: StackConfig, **overrides: Any) -> str:
    return yaml.safe_dump(serve_config(stack, **overrides), sort_keys=False)
