"""Dynamic batching for the CPU engines (BigDL-LLM, ONNX Runtime): one generation loop, shared by both.

    engine.py     BatchingEngine: the `Engine` both subclass (they only load a model), and loading helpers
    scheduler.py  BatchScheduler: the worker thread and the running batch; BatchModel, the model side it drives
    sequence.py   one request: its asyncio stream, detokenizing, stop strings, finish reasons
    sampling.py   greedy, or temperature + top-p with each request's own generator

Each engine brings its own `BatchModel` (the KV cache layout is the engine's business): BigDL-LLM's is in
`engines/bigdl/left_padded.py`, ONNX Runtime's in `engines/onnxruntime/kv_cache.py`. Engine libraries are not
imported here; torch is in every CPU image.
"""
