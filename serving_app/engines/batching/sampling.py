"""Choosing each request's next token from the batch's logits: greedy, or temperature + top-p drawn from the
request's own generator, so a seeded request samples the same tokens in any batch."""

from __future__ import annotations

import os
from typing import Optional, Protocol, Sequence

import torch

from ..base import SamplingOptions

GREEDY_BELOW = 1e-5  # temperatures below this decode greedily (0 is greedy, as in OpenAI's API)


class Sampled(Protocol):
    """What sampling needs of a request: its options and its generator."""

    options: SamplingOptions
    generator: torch.Generator


def generator(seed: Optional[int]) -> torch.Generator:
    """A request's generator: seeded as asked, else from the OS."""
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    generator = torch.Generator()
    generator.manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
    return generator


def sample(logits: torch.Tensor, rows: Sequence[Sampled]) -> list[int]:
    """One token per row of `logits` [rows, vocab], with that row's options and generator."""
    greedy = logits.argmax(dim=-1).tolist()
    tokens = []
    for i, row in enumerate(rows):
        options = row.options
        if options.temperature < GREEDY_BELOW:
            tokens.append(greedy[i])
            continue
        scores = logits[i] / options.temperature
        if options.top_p < 1.0:
            ordered, order = scores.sort(descending=True)
            probs = ordered.softmax(dim=-1)
            # Drop tokens once the ones before them already reach top_p; the most likely token always stays.
            cut = probs.cumsum(dim=-1) - probs > options.top_p
            ordered = ordered.masked_fill(cut, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(0, order, ordered)
        probs = scores.softmax(dim=-1)
        tokens.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return tokens
