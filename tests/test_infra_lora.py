"""LoRA adapters in a stack file: validated with the app's args, and checked at preview like its model."""

from __future__ import annotations

from tests.infra_helpers import config_error, problems_of


def _with_adapters(values):
    values["serve"]["applications"][0]["args"]["lora"] = {
        "adapters": {"sql": "/models/loras/llama2-70b-sql", "chat": "org/llama2-70b-chat-lora"},
        "dynamic_dir": "/models/loras", "max_loras": 4}


def test_shipped_gpu_stack_takes_adapters():
    assert problems_of("gpu", _with_adapters) == ""


def test_adapters_on_the_volume_need_model_storage():
    def edit(values):
        _with_adapters(values)
        values.pop("modelStorage")

    problems = problems_of("gpu", edit)
    assert ("serve.applications[0].args.lora.adapters.sql: /models/loras/llama2-70b-sql is on the model volume but "
            "modelStorage is not configured") in problems
    assert "serve.applications[0].args.lora.dynamic_dir: /models/loras is on the model volume" in problems
    assert "lora.adapters.chat" not in problems  # a hub id


def test_a_cpu_engine_app_with_adapters_is_refused():
    def edit(values):
        values["serve"]["applications"][0]["args"]["lora"] = {"adapters": {"a": "/models/a"}}

    assert ("llm-serving:serve.applications[0].args.lora: the bigdl engine serves no LoRA adapters (only vllm "
            "does)") in config_error("cpu", edit)
