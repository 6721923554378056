"""Seeing it: mitmweb with sluice, driven by the SDK and looked at in a real (headless) Chromium.

One mitmweb runs for the module with client keys and a credential swap, so a real credential travels
upstream. A browser tab is opened on mitmweb *before* the traffic, so it receives every live update
mitmweb pushes over its websocket, then the calls are made:

1. a streamed call with thinking, first turn of a Claude Code-like session, its system prompt cached;
2. the same session's next turn, with a system prompt that changed: a prompt-cache miss;
3. a streamed tool call;
4. a provider 500; 5. a call refused by the client's budget; 6. a provider 429.

Then: the database rows carry the flags and the cache verdict; the flow list shows the comments and the
marks, and filters on them; the "LLM" contentview shows the reassembled text, thinking and tool call and
what sluice changed in the request; and the real credential is nowhere in the page, in any HTTP response
the page fetched, or in any websocket message mitmweb sent it.

Chromium is Debian's (`apt-get install chromium`, which scripts/test does when it is missing), driven by the
`playwright` package; `playwright install` is never used.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.e2e.harness import Proxy, anthropic_client
from tests.fake_provider import FakeProvider, Usage

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ALICE_KEY = "sk-sluice-seeing-alice"
BOB_KEY = "sk-sluice-seeing-bob"
REAL_KEY = "sk-ant-real-seeing-key-7f3a9c"
SESSION = "5e4c1d2a-seeing-session"
MODEL = "claude-sonnet-4-6"
THINKING = "The user greets me; a short answer will do."
TEXT = "Hello from the reassembled stream!"
CONFIG = """
[[clients]]
name = "alice"
key = "env:SLUICE_KEY_ALICE"

[[clients]]
name = "bob"
key = "env:SLUICE_KEY_BOB"
budget = { usd = 0.000001, period = "day" }

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:ANTHROPIC_KEY_1"]

[[rules.system_blocks]]
name = "policy"
text = "Answer politely."
"""
ENV = {"SLUICE_KEY_ALICE": ALICE_KEY, "SLUICE_KEY_BOB": BOB_KEY, "ANTHROPIC_KEY_1": REAL_KEY}


def _sse(*payloads: dict[str, Any]) -> str:
    return "".join(f"event: {p['type']}\ndata: {json.dumps(p)}\n\n" for p in payloads)


TOOL_STREAM = _sse(
    {
        "type": "message_start",
        "message": {
            "id": "msg_01SeeingToolCall",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 40, "output_tokens": 1},
        },
    },
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "id": "toolu_01Seeing", "name": "get_weather", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "input_json_delta", "partial_json": '{"location": "Zü'},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "input_json_delta", "partial_json": 'rich"}'},
    },
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 40, "output_tokens": 12},
    },
    {"type": "message_stop"},
)


def _turns(count: int, system: str) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for n in range(count):
        if n:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": f"answer {n}"}]})
        block: dict[str, Any] = {"type": "text", "text": f"question {n}"}
        if n == count - 1:
            block["cache_control"] = {"type": "ephemeral"}
        messages.append({"role": "user", "content": [block]})
    return {
        "model": MODEL,
        "max_tokens": 100,
        "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        "messages": messages,
        "extra_headers": {"x-claude-code-session-id": SESSION},
    }


@dataclass
class Recording:
    """What the browser tab received: HTTP responses (url, body) and websocket messages."""

    responses: list[tuple[str, bytes]] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)
    pending: list[Any] = field(default_factory=list)

    def collect(self) -> None:
        for response in self.pending:
            with contextlib.suppress(Exception):  # a websocket upgrade or a redirect has no body
                self.responses.append((response.url, response.body()))
        self.pending.clear()


@dataclass
class Seen:
    proxy: Proxy
    rows: list[dict[str, Any]]
    upstream_keys: list[str | None]
    page: Any | None
    recording: Recording
    skip_reason: str | None


def _browser_unavailable() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/test installs it when missing)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed: pip install -e '.[test]'"
    return None


@pytest.fixture(scope="module")
def seen(module_start_proxy: Any, fake_server: FakeProvider) -> Iterator[Seen]:
    fake_server.reset()
    proxy = module_start_proxy(program="mitmweb", config_toml=CONFIG, env=ENV)
    recording = Recording()
    skip_reason = _browser_unavailable()
    with contextlib.ExitStack() as stack:
        page = None
        if skip_reason is None:
            from playwright.sync_api import sync_playwright

            playwright = stack.enter_context(sync_playwright())
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            stack.callback(browser.close)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("response", lambda response: recording.pending.append(response))
            page.on(
                "websocket",
                lambda ws: ws.on("framereceived", lambda frame: recording.frames.append(str(frame))),
            )
            page.goto(f"{proxy.web_url}/?token={proxy.web_token}")
            page.wait_for_selector("footer")
        _send_traffic(proxy, fake_server)
        rows = proxy.wait_for_rows(6)
        upstream_keys = [request.header("x-api-key") for request in fake_server.requests]
        errors = fake_server.errors
        fake_server.reset()
        assert not errors, errors
        yield Seen(proxy, rows, upstream_keys, page, recording, skip_reason)


def _send_traffic(proxy: Proxy, fake: FakeProvider) -> None:
    with anthropic_client(proxy, api_key=ALICE_KEY) as alice:
        fake.next(thinking=THINKING, text=TEXT, usage=Usage(cache_write_5m_tokens=2048))
        with alice.messages.stream(**_turns(1, "You are a test assistant.")) as stream:
            assert stream.get_final_text() == TEXT
        fake.next(usage=Usage(cache_write_5m_tokens=2100))
        with alice.messages.stream(**_turns(2, "You are a test assistant. It is 10:02.")) as stream:
            stream.get_final_message()
        fake.next(body=TOOL_STREAM, headers=[("content-type", "text/event-stream")])
        tool_stream = alice.messages.create(
            model=MODEL, max_tokens=100, stream=True, messages=[{"role": "user", "content": "Weather?"}]
        )
        assert [event.type for event in tool_stream][-1] == "message_stop"
        fake.next(status=500)
        with pytest.raises(anthropic.InternalServerError):
            alice.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "boom"}])
    with anthropic_client(proxy, api_key=BOB_KEY) as bob, pytest.raises(anthropic.RateLimitError):
        bob.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    with anthropic_client(proxy, api_key=ALICE_KEY) as alice:
        fake.next(status=429)  # last: it cools the only upstream key down
        with pytest.raises(anthropic.RateLimitError):
            alice.messages.create(
                model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "again"}]
            )


def test_rows_carry_the_cache_verdict_and_what_went_wrong(seen: Seen) -> None:
    first, miss, tool, failed, refused, limited = seen.rows
    assert (first["session_id"], first["cache_status"], first["cache_note"]) == (SESSION, "write", None)
    assert (miss["session_id"], miss["cache_status"]) == (SESSION, "miss")
    assert miss["cache_note"].startswith("prefix changed at system[")
    assert (tool["stop_reason"], tool["output_tokens"]) == ("tool_use", 12)
    assert (failed["status"], limited["status"]) == (500, 429)
    assert refused["status"] == 429 and "budget exhausted" in refused["rules_applied"]
    assert refused["client"] == "bob"
    # The swap really happened (so "nowhere in the page" below is not vacuous); bob never went upstream.
    assert seen.upstream_keys == [REAL_KEY] * 5
    assert all(REAL_KEY not in json.dumps(row) for row in seen.rows)


def test_mitmweb_shows_marks_comments_and_the_llm_view_without_the_real_key(seen: Seen) -> None:
    if seen.skip_reason is not None:
        pytest.skip(seen.skip_reason)
    from playwright.sync_api import expect

    page = seen.page
    rows = page.locator(".flow-table tbody tr.has-request")
    expect(rows).to_have_count(6)

    # The flow list: comments with #tags, marks as emoji.
    comments = rows.locator("td.col-comment")
    expect(comments.nth(0)).to_contain_text(f"in 21 (cache r 0 w 2048) · out 9 · {MODEL}")
    expect(comments.nth(1)).to_contain_text("#cache-miss")
    expect(comments.nth(1)).to_contain_text("cache miss: prefix changed at system[")
    expect(comments.nth(3)).to_contain_text("#error")
    expect(comments.nth(4)).to_contain_text("#budget")
    expect(comments.nth(5)).to_contain_text("#rate-limited")
    markers = [rows.nth(n).locator("span.marker").inner_text() for n in range(6)]
    assert markers == ["", "💔", "", "❌", "💸", "⌛"]

    # Filtering on the marks and the tags.
    search = page.get_by_placeholder("Search")
    search.fill("~marked")
    expect(rows).to_have_count(4)
    search.fill('~comment "#cache-miss"')
    expect(rows).to_have_count(1)
    search.fill("")
    expect(rows).to_have_count(6)

    # The LLM contentview: the first call's response, reassembled, and its request, with sluice's change.
    content = page.locator(".flow-detail .contentview pre")
    rows.nth(0).click()
    tab(page, "Response")
    expect(content).to_contain_text("LLM response · anthropic messages · HTTP 200 · streamed")
    expect(content).to_contain_text("━━ thinking ━━")
    expect(content).to_contain_text(THINKING)
    expect(content).to_contain_text(TEXT)
    expect(content).to_contain_text("limits")
    tab(page, "Request")
    expect(content).to_contain_text("sluice changed this request: system_block:policy")
    expect(content).to_contain_text("◀ added by sluice")
    expect(content).to_contain_text("Answer politely.")
    # The cache miss, and the tool call.
    rows.nth(1).click()
    tab(page, "Response")
    expect(content).to_contain_text("cache   miss: prefix changed at system[")
    rows.nth(2).click()
    tab(page, "Response")
    expect(content).to_contain_text("━━ tool call: get_weather (toolu_01Seeing) ━━")
    expect(content).to_contain_text('"location": "Zürich"')
    tab(page, "Request")
    expect(content).to_contain_text("messages[0].content · user · text")

    # The real credential: not in the page, not in any response it fetched, not in any live update.
    seen.recording.collect()
    fetched = [url for url, _ in seen.recording.responses]
    assert any("/flows" in url for url in fetched) and any("/content/" in url for url in fetched)
    assert seen.recording.frames, "the tab received no live updates"
    assert any(ALICE_KEY in frame for frame in seen.recording.frames)  # the client's own key is shown
    assert REAL_KEY not in page.content()
    leaks = [url for url, body in seen.recording.responses if REAL_KEY.encode() in body]
    assert leaks == []
    assert [frame[:120] for frame in seen.recording.frames if REAL_KEY in frame] == []


def tab(page: Any, name: str) -> None:
    page.locator(".flow-detail nav.nav-tabs a", has_text=name).click()
