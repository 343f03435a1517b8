"""vLLM's engine argument names (AsyncEngineArgs fields), so an engine_kwargs typo fails at preview. Generated from
the installed vLLM; tests/serving_app/engines/test_vllm_arg_names.py checks it against the main environment's."""

VLLM_ENGINE_ARG_NAMES = frozenset()
