"""The ONNX Runtime engine (AMD EPYC, any x86 CPU).

    engine.py             OnnxRuntimeEngine: loads the session, batched by `batching`
    model_dir.py          which converted directory to serve; refuses or converts a plain Hugging Face model
    kv_cache.py           SharedKVCacheModel: the running rows' KV cache, updated in place by the graph
    convert.py            the conversion (`python -m serving_app.convert`): export, int8, attention rewrite
    attention_rewrite.py  the graph rewrite that makes the KV cache in-place
    rotary.py             the rotary embedding moved into that attention (its pattern and cos/sin tables)

Only `engine` needs ONNX Runtime and Optimum at import; the others import them where they use them.
"""
