"""The same answers from every engine: the default model's fixed chat prompts and perplexity text, the transformers
float32 reference for them (a fixture written in the main environment), and how an engine is asked in-process.

    .venv/bin/python -m tests.parity      # regenerates tests/fixtures/parity/smollm2-135m-instruct.json

`tests/test_parity.py` runs each engine in its own environment against the fixture: the engine is created from
ServeArgs and asked through `OpenAIAPI` (chat template, tokenization, scheduler, detokenization: what a client
gets), one prompt at a time, greedy. Perplexity runs through the engine's own `BatchModel` (the served forward and
KV cache): one prefill of the first token, then one decode step per token of the text.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "parity" / "smollm2-135m-instruct.json"
MAX_TOKENS = 48
# A real English text every Debian system ships; its first PERPLEXITY_TOKENS tokens (no special tokens).
PERPLEXITY_TEXT = Path("/usr/share/common-licenses/Apache-2.0")
PERPLEXITY_TOKENS = 384
# Factual prompts: (question, the word the answer must contain, as the reference's does).
FACTUAL = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is 2 + 2?", "4"),
    ("How many days are there in a week?", "7"),
    ("What is the chemical symbol for water?", "H2O"),
]
# Open prompts: float engines must produce the reference's tokens here too.
OPEN = [
    "Write a haiku about the sea.",
    "Explain in two sentences what a CPU does.",
    "Give me three tips for sleeping better.",
]


def prompts() -> list[str]:
    return [question for question, _ in FACTUAL] + OPEN


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def default_model() -> Path:
    """The converted default model. Converting needs the main environment (transformers 5 + gguf); other
    environments ask it to."""
    if importlib.util.find_spec("gguf") is None:
        main_python = REPO / ".venv" / "bin" / "python"
        result = subprocess.run([str(main_python), "-m", "devtools.default_model"], cwd=REPO, capture_output=True,
                                text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"{main_python} -m devtools.default_model failed:\n{result.stderr[-2000:]}")
        return Path(result.stdout.strip().splitlines()[-1])
    from devtools.default_model import ensure

    return ensure()


def perplexity_ids(tokenizer: Any) -> list[int]:
    ids = tokenizer.encode(PERPLEXITY_TEXT.read_text(), add_special_tokens=False)[:PERPLEXITY_TOKENS]
    if len(ids) < PERPLEXITY_TOKENS:
        raise RuntimeError(f"{PERPLEXITY_TEXT} has only {len(ids)} tokens")
    return ids


def _log_softmax_at(logits: Any, token: int) -> float:
    import torch

    return float(torch.log_softmax(logits.float(), dim=-1)[token])


def batch_model_perplexity(model: Any, ids: Sequence[int]) -> float:
    """Perplexity of ids[1:] given the prefix, through a `BatchModel` (prefill, then decode one token a step)."""
    model.reset()
    logits = model.prefill([list(ids[:1])])[0]
    total = 0.0
    for position in range(1, len(ids)):
        total -= _log_softmax_at(logits, ids[position])
        if position + 1 < len(ids):
            logits = model.decode([ids[position]])[0]
    model.reset()
    return math.exp(total / (len(ids) - 1))


def vllm_teacher_forced(engine: "InProcessEngine", ids: Sequence[int]) -> list[tuple[int, float, float]]:
    """Teacher forcing through a started vLLM engine (the served model and its configuration): for each of ids[1:],
    (the token the engine ranks first there, its log-probability, the log-probability the engine gives that id)."""
    from vllm import SamplingParams, TokensPrompt

    async def scored() -> Any:
        params = SamplingParams(max_tokens=1, prompt_logprobs=1)
        final = None
        async for output in engine.engine._engine.generate(TokensPrompt(prompt_token_ids=list(ids)), params,
                                                           f"teacher-forced-{id(ids)}"):
            final = output
        return final.prompt_logprobs

    scores = []
    for position, ranked in enumerate(engine.loop.run_until_complete(scored())[1:], start=1):
        top_id, top = min(ranked.items(), key=lambda item: (item[1].rank, item[0] == ids[position]))
        scores.append((top_id, top.logprob, ranked[ids[position]].logprob))
    return scores


def first_divergence(tokenizer: Any, reference_ids: Sequence[int], reference_text: str, text: str) -> Optional[int]:
    """The reference's generated token at which `text` parts from the reference's answer, None when they are the
    same. Found on the text, not by encoding `text` again: a byte-level BPE may encode a generated text into other
    tokens than those generated."""
    if text == reference_text:
        return None
    common = len(os.path.commonprefix([text, reference_text]))
    for index in range(len(reference_ids)):
        if len(tokenizer.decode(reference_ids[:index + 1], skip_special_tokens=True)) > common:
            return index
    return len(reference_ids)  # the reference stopped there (its end-of-sequence step)


class InProcessEngine:
    """A registry engine started in this process, asked through OpenAIAPI as the ingress asks it."""

    def __init__(self, **serve_args: Any):
        from serving_app.api import OpenAIAPI
        from serving_app.engines.registry import create_engine
        from serving_app.serve_args import ServeArgs

        self.args = ServeArgs(served_model_name="parity", **serve_args)
        self.engine = create_engine(self.args)
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.engine.start())
        self.api = OpenAIAPI(self.engine, self.args)

    def chat(self, prompt: str, max_tokens: int = MAX_TOKENS) -> str:
        body = {"messages": messages(prompt), "max_tokens": max_tokens, "temperature": 0}
        parsed, request = self.api.chat_request(json.dumps(body).encode())
        answer = self.loop.run_until_complete(self.api.answer(parsed, request))
        return answer.choices[0].message.content

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.shutdown())
        self.loop.close()


def reference(model_dir: Path) -> dict[str, Any]:
    """The transformers float32 answers and perplexity (main environment)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    answers = {}
    with torch.no_grad():
        for prompt in prompts():
            ids = tokenizer.apply_chat_template(messages(prompt), add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            output = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=MAX_TOKENS, do_sample=False, output_scores=True,
                                    return_dict_in_generate=True)
            generated = output.sequences[0, len(ids):].tolist()
            # How far the chosen token's logit led the runner-up's at each step: where it is small, a less precise
            # engine may pick the other one (bfloat16), and from there on write another text.
            margins = [round(float(top[0] - top[1]), 3)
                       for top in (torch.topk(step[0].float(), 2).values for step in output.scores)]
            if generated and generated[-1] == tokenizer.eos_token_id:
                generated = generated[:-1]  # its margin stays: where an engine may go on instead of stopping
            answers[prompt] = {"prompt_token_ids": list(ids), "token_ids": generated, "margins": margins,
                               "text": tokenizer.decode(generated, skip_special_tokens=True)}
        text_ids = perplexity_ids(tokenizer)
        logits = model(torch.tensor([text_ids])).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(text_ids[1:]))
    for question, word in FACTUAL:
        if word not in answers[question]["text"]:
            raise RuntimeError(f"the reference answers {question!r} with {answers[question]['text']!r}, "
                               f"without {word!r}: fix FACTUAL")
    import transformers

    return {
        "model": model_dir.name,
        "made_by": f"transformers {transformers.__version__}, float32, greedy (python -m tests.parity)",
        "max_tokens": MAX_TOKENS,
        "answers": answers,
        "perplexity": {"text": str(PERPLEXITY_TEXT), "tokens": PERPLEXITY_TOKENS, "token_ids": text_ids,
                       "value": round(math.exp(float(nll)), 4)},
    }


def load_fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def main() -> int:
    data = reference(default_model())
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    for prompt, answer in data["answers"].items():
        print(f"{prompt!r} -> {answer['text']!r}")
    print(f"perplexity {data['perplexity']['value']} over {PERPLEXITY_TOKENS} tokens of {PERPLEXITY_TEXT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
