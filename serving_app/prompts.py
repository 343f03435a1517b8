"""What the API needs of a model's tokenizer besides tokens: its chat template rendered, and how many characters
one token can stand for (so an over-long prompt is refused before it is tokenized)."""

from __future__ import annotations

from typing import Any

from .errors import APIError


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The model's chat template; BigDL-LLM's transformers (4.31) predates apply_chat_template, so render it."""
    template = getattr(tokenizer, "chat_template", None)
    if template and hasattr(tokenizer, "apply_chat_template"):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    template = template or getattr(tokenizer, "init_kwargs", {}).get("chat_template")
    if not template:
        raise APIError(400, "this model's tokenizer has no chat template: use /v1/completions", code="no_chat_template")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
    )


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token stands for. A vocabulary entry is never shorter than the text it decodes to
    (byte-level entries spell each byte with one character, SentencePiece's "▁" is one space), so a prompt of N
    characters has at least N / this many tokens."""
    return max(len(token) for token in tokenizer.get_vocab())
