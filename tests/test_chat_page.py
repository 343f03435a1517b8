"""The chat page (GET <route>/chat) in a real headless Chromium (tests/browser.py) against the app deployed on a
local Ray: a question typed into the page gets an answer streamed from /v1/chat/completions, piece by piece; an API
key typed into the page is sent as `Authorization: Bearer`."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.browser import Browser, find_chromium

pytestmark = pytest.mark.e2e

ANSWER = "document.querySelector('.message.assistant')"


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        message = "Chromium is not installed (bash scripts/install_test_services.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


# Records the answer's text at every change the page makes to it, in the page itself: polling from the test over
# DevTools would miss the pieces of a fast answer.
RECORD_ANSWER = """(() => { window.snapshots = [];
    new MutationObserver(() => { const answer = document.querySelector('.message.assistant:last-child');
                                 if (answer) window.snapshots.push(answer.textContent); })
      .observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true}); })()"""


# Hands the page the server's answer one event per read, 20 ms apart. A small model on a local head can send every
# event before the page's first read, which then renders the whole answer in one task; what is tested is that the
# page renders each event as it comes (the server's streaming has its own tests).
PACE_EVENTS = """(() => { const original = window.fetch;
    window.fetch = async (url, options) => {
      const response = await original(url, options);
      if (!String(url).endsWith('/v1/chat/completions') || !response.ok) return response;
      const reader = response.body.getReader(), decoder = new TextDecoder(), encoder = new TextEncoder();
      let buffer = '';
      const paced = new ReadableStream({ async pull(controller) {
        for (;;) {
          const end = buffer.indexOf('\\n\\n');
          if (end >= 0) {
            const event = buffer.slice(0, end + 2); buffer = buffer.slice(end + 2);
            await new Promise(resolve => setTimeout(resolve, 20));
            controller.enqueue(encoder.encode(event)); return;
          }
          const {value, done} = await reader.read();
          if (done) { if (buffer) controller.enqueue(encoder.encode(buffer)); controller.close(); return; }
          buffer += decoder.decode(value, {stream: true});
        } } });
      return new Response(paced, {status: response.status, headers: response.headers});
    }; })()"""


async def _ask(page: Browser, question: str) -> list[str]:
    """Type the question, press Enter, and return the answer's text as the page showed it, change by change."""
    await page.evaluate(RECORD_ANSWER)
    await page.evaluate(PACE_EVENTS)
    await page.type("#question", question)
    await page.press_enter()
    await page.wait_for(ANSWER, timeout=30)
    for _ in range(2400):  # 2 minutes at most
        state, text = await page.evaluate(f"[{ANSWER}.dataset.state, {ANSWER}.textContent]")
        if state != "streaming":
            assert state == "done", f"the page shows an error: {text!r}"
            seen = [snapshot for snapshot in await page.evaluate("window.snapshots") if snapshot]
            return list(dict.fromkeys(seen + [text]))
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the answer did not finish: {text!r}")


def test_a_typed_question_gets_a_streamed_answer(chromium: str, base_url: str) -> None:
    async def run() -> None:
        async with Browser(chromium) as page:
            await page.open(f"{base_url}/chat", ready="document.getElementById('model').textContent !== '…'")
            assert await page.evaluate("document.getElementById('model').textContent") == "tiny-llama"
            seen = await _ask(page, "What is the capital of France?")
            assert seen[-1], "the answer is empty"
            partial = [text for text in seen[:-1] if text]
            # Streamed: the page showed the answer growing before it was whole.
            assert partial and all(seen[-1].startswith(text) for text in partial), seen
            assert await page.evaluate("document.querySelector('.message.user').textContent") == \
                "What is the capital of France?"

    asyncio.run(run())


def test_the_page_sends_the_api_key_typed_into_it(chromium: str, base_url: str) -> None:
    async def run() -> None:
        async with Browser(chromium) as page:
            await page.open(f"{base_url}/chat")
            await page.type("#key", "sk-chat-page-test")
            await page.evaluate("document.getElementById('key').dispatchEvent(new Event('change'))")
            # Record what the page's own fetch calls send (the test server needs no key, so they succeed).
            await page.evaluate("""(() => { window.sent = []; const original = window.fetch;
                window.fetch = (url, options) => { window.sent.push([String(url), (options || {}).headers || {}]);
                                                   return original(url, options); }; })()""")
            await _ask(page, "Hello")
            sent = await page.evaluate("window.sent")
            chat = [headers for url, headers in sent if url.endswith("/v1/chat/completions")]
            assert chat and chat[0].get("Authorization") == "Bearer sk-chat-page-test", sent
            assert await page.evaluate("localStorage.getItem('chat-api-key')") == "sk-chat-page-test"

    asyncio.run(run())
