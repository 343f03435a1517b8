"""The serving application: one OpenAI-compatible HTTP API over vLLM, BigDL-LLM or ONNX Runtime.

`serving_app:typed_app_builder` is the Serve import path. Importing this package needs neither Ray nor an engine
(infra/ imports `serving_app.serve_args`), so the builder is resolved on first use.
"""


def __getattr__(name: str):
    if name == "typed_app_builder":
        from .ingress import typed_app_builder

        return typed_app_builder
    raise AttributeError(f"module 'serving_app' has no attribute {name!r}")
