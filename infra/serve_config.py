"""serveConfigV2: the one builder of the document (`build_serve_config`, `application`) and the stack's own config
(`serve_config`), shared by the RayService, render, local mode, the tests and the benchmarks."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

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


def serve_config(stack: StackConfig) -> dict[str, Any]:
    """The Serve config the RayService carries."""
    applications = []
    for app in stack.serve.applications:
        # Resolved args (engine, data type, GPU count...) minus defaults: the config says what runs, briefly.
        if app.multi_model is not None:
            args = app.multi_model.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
            applications.append(application(app.name, app.route_prefix, args, app.runtime_env,
                                             import_path=MULTI_MODEL_IMPORT_PATH))
        else:
            assert app.args is not None
            args = app.args.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
            applications.append(application(app.name, app.route_prefix, args, app.runtime_env))
    # A proxy on every node: the serve Service reaches whichever pod it picks (KubeRay marks ready ones).
    return build_serve_config(applications, host="0.0.0.0", port=stack.serve.port, proxy_location="EveryNode")
