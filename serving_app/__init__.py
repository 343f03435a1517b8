"""The serving application: one OpenAI-compatible HTTP API over vLLM, BigDL-LLM or ONNX Runtime.

`serving_app:typed_app_builder` is the Serve import path (`serving_app:multi_model_app_builder` for several models
behind one route). Importing this package needs neither Ray nor an engine (infra/ imports `serving_app.serve_args`),
so the builders are resolved on first use.
"""


def __getattr__(name: str):
    if name == "typed_app_builder":
        from .ingress import typed_app_builder

        return typed_app_builder
    if name == "multi_model_app_builder":
        from .router import multi_model_app_builder

        return multi_model_app_builder
    raise AttributeError(f"module 'serving_app' has no attribute {name!r}")
