"""serveConfigV2: the one builder of the document (`build_serve_config`, `application`) and the stack's own config
(`serve_config`), shared by the RayService, render, local mode, the tests and the benchmarks."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Union

from serving_app.serve_args import parse_serve_args

from .config import StackConfig

IMPORT_PATH = "serving_app:typed_app_builder"
MULTI_MODEL_IMPORT_PATH = "serving_app:multi_model_app_builder"  # args: serving_app.multi_model.MultiModelArgs


def application(name: str, route_prefix: str, args: dict[str, Any],
                runtime_env: Optional[Mapping[str, Any]] = None, import_path: str = IMPORT_PATH) -> dict[str, Any]:
    """One application of our app (its `args` are ServeArgs fields, or MultiModelArgs' for MULTI_MODEL_IMPORT_PATH)."""
    entry: dict[str, Any] = {"name": name, "route_prefix": route_prefix, "import_path": import_path, "args": args}
    if runtime_env:
        entry["runtime_env"] = dict(runtime_env)
    return entry


def build_serve_config(applications: Iterable[dict[str, Any]], *, host: str, port: int,
                       proxy_location: str) -> dict[str, Any]:
    return {
        "proxy_location": proxy_location,
        "http_options": {"host": host, "port": port},
        "applications": list(applications),
    }


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
        applications.append(application(app.name, app.route_prefix, args, app.runtime_env))
    # A proxy on every node: the serve Service reaches whichever pod it picks (KubeRay marks ready ones).
    return build_serve_config(applications, host="0.0.0.0", port=stack.serve.port, proxy_location="EveryNode")
