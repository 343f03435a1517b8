"""The CPU engines' shared dynamic batching loop (serving_app/engines/batching/), without Ray or an engine library.

A scripted model checks the loop's bookkeeping exactly (finish reasons, stop strings, aborts, batch bounds); the
generated tiny Llama, in float32 through transformers, checks that the left-padded cache BigDL-LLM uses
(serving_app/engines/bigdl/left_padded.py: padding, masks and cache surgery) leaves every request's output
unchanged by its neighbours.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Optional

import pytest

pytestmark = pytest.mark.engine_env  # the shared loop against each environment's torch/transformers
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from serving_app.engines.base import EngineDeadError, GenerationRequest  # noqa: E402
from serving_app.engines.batching.scheduler import BatchScheduler  # noqa: E402
from serving_app.engines.bigdl.left_padded import HFCausalLM, LeftPaddedBatch  # noqa: E402
from tests.batching_helpers import (  # noqa: E402
    MAX_LEN,
    PREFILL_TOKENS,
    DigitTokenizer,
    ScriptedModel,
    collect,
    request,
    run,
    scripted,
)

# ---- bookkeeping, with the scripted model --------------------------------------------------------------------


def test_each_request_keeps_its_own_max_tokens_stop_and_eos():
    scheduler, model = scripted(batch_timeout=0.2)

    async def scenario():
        return await asyncio.gather(
            collect(scheduler, request("len", [1], 5)),  # c d e f g -> length
            collect(scheduler, request("stop", [1], 30, stop=("ef", "zz"))),  # c d | e f -> stop before "ef"
            collect(scheduler, request("eos", [35], 30)),  # ... 39, then 0 = eos -> stop
            collect(scheduler, request("eos-ignored", [35], 8, ignore_eos=True)),
        )

    (text_len, last_len, _), (text_stop, last_stop, _), (text_eos, last_eos, _), (text_ign, last_ign, _) = run(
        scenario())
    scheduler.shutdown()
    assert (text_len, last_len.finish_reason, last_len.num_generated_tokens) == ("cdefg", "length", 5)
    assert (text_stop, last_stop.finish_reason) == ("cd", "stop")
    assert (text_eos, last_eos.finish_reason, last_eos.num_generated_tokens) == ("klmn", "stop", 5)
    # The eos token is generated (and counted) but has no text.
    assert (text_ign, last_ign.finish_reason, last_ign.num_generated_tokens) == ("klmnbcd", "length", 8)
    assert model.prefills == [4], "the four requests should have been prefilled together"


def test_a_burst_beyond_max_prefill_tokens_is_prefilled_in_groups_shortest_first():
    scheduler, model = scripted(batch_timeout=0.2, max_prefill_tokens=8)

    async def scenario():
        return await asyncio.gather(*(collect(scheduler, request(f"r{i}", prompt, 3)) for i, prompt in
                                      enumerate([[1, 2, 3, 4], [1], [5, 6, 7, 8], [2]])))

    results = run(scenario())
    scheduler.shutdown()
    # Lengths 1, 1 (2 padded tokens), then 4, 4 (8): a group of three would pad to 12 > 8.
    assert model.prefills == [2, 2]
    assert [text for text, _, _ in results] == ["fgh", "cde", "jkl", "def"]


def test_a_stop_sequence_split_across_tokens_is_never_streamed():
    scheduler, _ = scripted()
    text, last, chunks = run(collect(scheduler, request("r", [1], 30, stop=("cdex", "def"))))
    scheduler.shutdown()
    # c, cd, cde may each begin "cdex" (and "de" begins "def"): held back until "cdef" ends it at "def".
    assert text == "c" and last.finish_reason == "stop"
    assert [c.text for c in chunks] == ["c"]


def test_a_request_that_finishes_early_is_answered_before_the_batch_ends():
    scheduler, _ = scripted(slow=0.002)

    async def scenario():
        long = asyncio.ensure_future(collect(scheduler, request("long", [1], 400, ignore_eos=True)))
        text, last, _ = await collect(scheduler, request("short", [1], 3))
        still_running = not long.done() and scheduler.stats().running_requests == 1
        await long
        return last, still_running, long.result()[1]

    short_last, still_running, long_last = run(scenario())
    scheduler.shutdown()
    assert short_last.finish_reason == "length" and short_last.num_generated_tokens == 3
    assert still_running, "the short request waited for the long one"
    assert long_last.num_generated_tokens == 400


def test_requests_join_a_running_batch_and_the_batch_size_is_a_bound():
    scheduler, model = scripted(slow=0.002, batch_size=3)

    async def scenario():
        first = asyncio.ensure_future(collect(scheduler, request("first", [1], 60, ignore_eos=True)))
        await asyncio.sleep(0.05)  # first is decoding alone by now
        others = [asyncio.ensure_future(collect(scheduler, request(f"o{i}", [2 + i], 20, ignore_eos=True)))
                  for i in range(4)]
        results = await asyncio.gather(first, *others)
        return results

    results = run(scenario())
    scheduler.shutdown()
    assert [r[1].num_generated_tokens for r in results] == [60, 20, 20, 20, 20]
    assert max(rows for rows, _, _ in model.calls) == 3
    first_decodes = [rows for rows, new, prefill in model.calls if not prefill]
    assert 3 in first_decodes, "late requests never joined the running batch"


def test_abort_frees_the_slot_and_stops_the_compute():
    scheduler, model = scripted(slow=0.002, batch_size=1)

    async def scenario():
        stream = scheduler.generate(request("running", [1], 1000, ignore_eos=True))
        for _ in range(3):
            await stream.__anext__()
        waiting = asyncio.ensure_future(collect(scheduler, request("waiting", [1], 5)))
        await asyncio.sleep(0.05)
        assert scheduler.stats().waiting_requests == 1  # batch_size 1: it waits for the slot
        await stream.aclose()  # the client left: the generator's close aborts the request
        text, last, _ = await waiting  # the freed slot serves the waiting request
        calls_after = len(model.calls)
        await asyncio.sleep(0.1)
        return last, calls_after

    last, calls_after = run(scenario())
    stats = scheduler.stats()
    scheduler.shutdown()
    assert last.num_generated_tokens == 5
    assert stats.running_requests == 0 and stats.waiting_requests == 0
    assert len(model.calls) == calls_after, "the model kept running after every request left"
    assert sum(1 for rows, _, prefill in model.calls if not prefill) < 200


def test_aborting_a_waiting_request_removes_it_from_the_queue():
    scheduler, model = scripted(slow=0.002, batch_size=1)

    async def scenario():
        running = asyncio.ensure_future(collect(scheduler, request("running", [1], 100, ignore_eos=True)))
        queued = asyncio.ensure_future(collect(scheduler, request("queued", [1], 5)))
        await asyncio.sleep(0.05)
        assert scheduler.stats().waiting_requests == 1
        queued.cancel()  # what Serve does when the client of a waiting request disconnects
        await asyncio.sleep(0.01)
        waiting = scheduler.stats().waiting_requests
        await running
        return waiting

    assert run(scenario()) == 0
    scheduler.shutdown()
    assert model.prefills == [1], "the cancelled request was still prefilled"


def test_the_first_request_waits_at_most_batch_timeout_for_company():
    scheduler, model = scripted(batch_timeout=0.3)

    async def scenario():
        started = time.monotonic()
        first = asyncio.ensure_future(collect(scheduler, request("a", [1], 2)))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(collect(scheduler, request("b", [1], 2)))
        await asyncio.gather(first, second)
        return time.monotonic() - started

    elapsed = run(scenario())
    alone_started = time.monotonic()
    run(collect(scheduler, request("c", [1], 2)))
    alone = time.monotonic() - alone_started
    scheduler.shutdown()
    assert model.prefills[0] == 2, "requests within batch_timeout were not grouped"
    assert elapsed < 1.0 and 0.25 < alone < 1.0, (elapsed, alone)


def test_a_failing_forward_fails_its_requests_and_the_engine_keeps_serving():
    scheduler, model = scripted()
    model.fail_next = True
    with pytest.raises(RuntimeError, match="scripted failure"):
        run(collect(scheduler, request("bad", [1], 5)))
    text, last, _ = run(collect(scheduler, request("good", [1], 3)))
    scheduler.check_health()
    stats = scheduler.stats()
    scheduler.shutdown()
    assert text == "cde" and stats.running_requests == 0


def test_a_dead_batching_thread_fails_health_and_waiting_requests():
    class BrokenTokenizer(DigitTokenizer):
        def decode(self, ids, skip_special_tokens=True):
            if 5 in ids:
                raise KeyError("decoder bug")
            return super().decode(ids, skip_special_tokens)

    scheduler = BatchScheduler(LeftPaddedBatch(ScriptedModel(40)), BrokenTokenizer(), max_model_len=MAX_LEN,
                               eos_token_ids=[0], batch_size=4, batch_timeout=0, max_prefill_tokens=PREFILL_TOKENS)
    scheduler.start()
    with pytest.raises(EngineDeadError):
        run(collect(scheduler, request("r", [1], 10)))
    with pytest.raises(EngineDeadError, match="decoder bug"):
        scheduler.check_health()
    with pytest.raises(EngineDeadError):
        run(collect(scheduler, request("after", [1], 2)))


def test_shutdown_ends_streams_and_health():
    scheduler, _ = scripted(slow=0.002)

    async def scenario():
        stream = asyncio.ensure_future(collect(scheduler, request("r", [1], 1000, ignore_eos=True)))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(scheduler.shutdown)
        with pytest.raises(EngineDeadError):
            await stream

    run(scenario())
    with pytest.raises(EngineDeadError):
        scheduler.check_health()


def test_requests_beyond_the_context_or_duplicated_are_refused():
    scheduler, _ = scripted(max_model_len=16, slow=0.02)

    async def scenario():
        with pytest.raises(ValueError, match="max_model_len 16"):
            await collect(scheduler, request("long", list(range(1, 10)), 8))
        with pytest.raises(ValueError, match="empty"):
            await collect(scheduler, request("empty", [], 8))
        first = scheduler.generate(request("same", [1], 15))
        await first.__anext__()
        with pytest.raises(ValueError, match="already running"):
            await collect(scheduler, request("same", [1], 5))
        await first.aclose()

    run(scenario())
    scheduler.shutdown()


# ---- the real model: padding, masks, positions and cache surgery ----------------------------------------------


@pytest.fixture(scope="module")
def llama(tiny_model: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32).eval()
    return HFCausalLM(model), AutoTokenizer.from_pretrained(tiny_model)


def llama_scheduler(llama, **kwargs: Any) -> BatchScheduler:
    model, tokenizer = llama
    options = dict(max_model_len=MAX_LEN, eos_token_ids=[tokenizer.eos_token_id], batch_size=8, batch_timeout=0.5,
                   max_prefill_tokens=PREFILL_TOKENS, num_threads=1)
    options.update(kwargs)
    scheduler = BatchScheduler(LeftPaddedBatch(model, tokenizer.pad_token_id), tokenizer, **options)
    scheduler.start()
    return scheduler


PROMPTS = ["the", "a request to the cluster of nodes with memory", "model serve token " * 8]


def test_greedy_output_is_the_same_alone_and_batched_with_other_lengths(llama):
    _, tokenizer = llama
    scheduler = llama_scheduler(llama)
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == 3

    def greedy(i: int) -> GenerationRequest:
        return request(f"g{i}-{time.monotonic_ns()}", prompts[i], 24, temperature=0, ignore_eos=True)

    alone = [run(collect(scheduler, greedy(i)))[0] for i in range(3)]

    async def together():
        return await asyncio.gather(*(collect(scheduler, greedy(i)) for i in range(3)))

    batched = [text for text, _, _ in run(together())]
    scheduler.shutdown()
    assert all(alone) and batched == alone


def test_a_request_joining_mid_generation_and_one_leaving_early_do_not_disturb_the_others(llama):
    _, tokenizer = llama
    scheduler = llama_scheduler(llama, batch_timeout=0)
    prompts = [tokenizer.encode(p) for p in PROMPTS]

    def greedy(name: str, i: int, n: int) -> GenerationRequest:
        return request(f"{name}-{time.monotonic_ns()}", prompts[i], n, temperature=0, ignore_eos=True)

    alone = {i: run(collect(scheduler, greedy("alone", i, 40)))[0] for i in (0, 2)}

    async def scenario():
        long = scheduler.generate(greedy("long", 0, 40))
        parts, generated = [], 0
        while generated < 10:
            chunk = await long.__anext__()
            parts.append(chunk.text)
            generated = chunk.num_generated_tokens
        # Joins with a longer prompt: the running row's cache is padded on the left.
        joined = asyncio.ensure_future(collect(scheduler, greedy("joined", 2, 40)))
        short = asyncio.ensure_future(collect(scheduler, greedy("short", 1, 3)))  # leaves after 3 tokens
        parts += [chunk.text async for chunk in long]
        await short
        return "".join(parts), (await joined)[0]

    long_text, joined_text = run(scenario())
    scheduler.shutdown()
    assert long_text == alone[0]
    assert joined_text == alone[2]


def test_a_seed_makes_sampling_repeatable_in_any_batch(llama):
    _, tokenizer = llama
    scheduler = llama_scheduler(llama, batch_timeout=0.2)
    prompt = tokenizer.encode(PROMPTS[1])

    def sampled(name: str, seed: Optional[int]) -> GenerationRequest:
        return request(name, prompt, 16, temperature=1.0, top_p=0.9, seed=seed, ignore_eos=True)

    alone = run(collect(scheduler, sampled("alone", 7)))[0]

    async def together():
        return await asyncio.gather(
            collect(scheduler, sampled("a", 7)), collect(scheduler, sampled("b", 8)),
            collect(scheduler, request("c", tokenizer.encode(PROMPTS[2]), 16, temperature=1.0, seed=7)),
        )

    (same, _, _), (other, _, _), _ = run(together())
    scheduler.shutdown()
    assert same == alone
    assert other != alone
