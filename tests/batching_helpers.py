"""A scripted model and tokenizer for the CPU engines' batching loop (`BatchScheduler`), and the calls that drive it
(shared by the loop's tests and its metrics' tests). Needs torch."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import torch

from serving_app.engines.base import GenerationRequest, SamplingOptions
from serving_app.engines.batching.scheduler import BatchScheduler
from serving_app.engines.bigdl.left_padded import LeftPaddedBatch
from serving_app.engines.options import BatchingOptions

MAX_LEN = 2048
PREFILL_TOKENS = BatchingOptions().max_prefill_tokens  # the engines' default


def request(rid: str, prompt: list[int], max_tokens: int, **options: Any) -> GenerationRequest:
    return GenerationRequest(rid, prompt, SamplingOptions(max_tokens=max_tokens, **options))


async def collect(scheduler: BatchScheduler, req: GenerationRequest) -> tuple[str, Any, list[Any]]:
    chunks = [chunk async for chunk in scheduler.generate(req)]
    return "".join(c.text for c in chunks), chunks[-1], chunks


class ScriptedModel:
    """Next token = last input token + 1 (mod vocab); the KV cache holds the fed token ids, so every forward also
    checks that the cache rows still line up with the requests they belong to."""

    def __init__(self, vocab: int, slow: float = 0.0):
        self.vocab = vocab
        self.slow = slow
        self.calls: list[tuple[int, int, bool]] = []  # (batch rows, new tokens, prefill)
        self.fail_next = False
        self.lock = threading.Lock()

    def forward(self, input_ids, attention_mask, position_ids, past):
        if self.slow:
            time.sleep(self.slow)
        with self.lock:
            self.calls.append((input_ids.shape[0], input_ids.shape[1], past is None))
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("scripted failure")
        fed = input_ids.float()[:, None, :, None]
        if past is not None:
            history = past[0][0]
            assert history.shape[2] + input_ids.shape[1] == attention_mask.shape[1], "cache and mask disagree"
            # A row's real (unmasked) cache entries are consecutive token ids of its own script: x, x+1, ...
            for row in range(history.shape[0]):
                real = history[row, 0, attention_mask[row, :-1].bool(), 0]
                assert int(real[-1]) == (int(input_ids[row, 0]) - 1) % self.vocab or len(real) == 0
                assert int(position_ids[row, 0]) == int(attention_mask[row].sum()) - 1, "wrong position id"
            fed = torch.cat([history, fed], dim=2)
        logits = torch.full((input_ids.shape[0], self.vocab), -10.0)
        logits[torch.arange(input_ids.shape[0]), (input_ids[:, -1] + 1) % self.vocab] = 10.0
        return logits, ((fed, fed.clone()),)

    @property
    def prefills(self) -> list[int]:
        return [rows for rows, _, prefill in self.calls if prefill]


class DigitTokenizer:
    """Token i decodes to chr(ord('a') + i % 26); token 0 is the eos."""

    eos_token_id = 0
    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + i % 26) for i in ids if not (skip_special_tokens and i == 0))


def scripted(vocab: int = 40, slow: float = 0.0, **kwargs: Any) -> tuple[BatchScheduler, ScriptedModel]:
    model = ScriptedModel(vocab, slow)
    options = dict(max_model_len=MAX_LEN, eos_token_ids=[0], batch_size=8, batch_timeout=0.0,
                   max_prefill_tokens=PREFILL_TOKENS)
    options.update(kwargs)
    scheduler = BatchScheduler(LeftPaddedBatch(model), DigitTokenizer(), **options)
    scheduler.start()
    return scheduler, model


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))
