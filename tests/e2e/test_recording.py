"""The recording proxy, end to end: real clients through a real mitmdump running sluice, the fake behind it.

What a user notices: the client gets exactly what the provider sent, and one `calls` row per provider call
says what it cost, whatever way the call ended. Tests here share one proxy (`sluice_proxy`, no config);
the ones that need their own processes live in `test_recording_processes.py`.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from state.pricing import price_call
from tests.e2e.harness import (
    CurlResult,
    Proxy,
    anthropic_client,
    async_anthropic_client,
    async_openai_client,
    curl,
    openai_client,
)
from tests.fake_provider import FakeProvider, RecordedRequest, Usage

pytestmark = pytest.mark.e2e

MODEL = "claude-opus-4-1"
CHAT_MODEL = "gpt-4o-mini"
REASONING_MODEL = "o3-mini"
MESSAGE: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
CHAT: dict[str, Any] = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
CHAT_URL = "https://api.openai.com/v1/chat/completions"

# Every cache column distinct, so a value landing in the wrong column shows.
CLAUDE_USAGE = Usage(
    input_tokens=1234,
    cache_read_tokens=5678,
    cache_write_5m_tokens=310,
    cache_write_1h_tokens=420,
    output_tokens=77,
)
# OpenAI: 60 of the 100 prompt tokens cached, 12 of the 25 output tokens reasoning.
GPT_USAGE = Usage(input_tokens=40, cache_read_tokens=60, output_tokens=25, reasoning_tokens=12)


# Helpers (also used by test_recording_processes.py).


def sse_records(body: bytes) -> list[tuple[str | None, str]]:
    """The SSE records of a whole body as (event, data) pairs."""
    found = []
    for record in body.decode().split("\n\n"):
        if not record.strip():
            continue
        fields = dict(line.split(": ", 1) for line in record.splitlines())
        found.append((fields.get("event"), fields["data"]))
    return found


def expected_cost(provider: str, model: str, usage: Usage, service_tier: str | None = None) -> float:
    """What genai-prices says the fake's usage costs (the truth the row must match)."""
    priced = price_call(
        provider,
        model,
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_5m_tokens=usage.cache_write_5m_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        output_tokens=usage.output_tokens,
        service_tier=service_tier,
    )
    assert priced.cost_usd is not None, priced.note
    return priced.cost_usd


def assert_tokens(row: dict[str, Any], usage: Usage) -> None:
    """The row's token columns are exactly the fake's usage (cache writes: Anthropic only)."""
    names = ("input_tokens", "cache_read_tokens", "output_tokens")
    if row["provider"] == "anthropic":
        names += ("cache_write_5m_tokens", "cache_write_1h_tokens")
    assert {name: row[name] for name in names} == {name: getattr(usage, name) for name in names}


def assert_timings(row: dict[str, Any]) -> None:
    assert row["duration_ms"] is not None and row["duration_ms"] >= 0
    assert row["ttft_ms"] is not None and 0 <= row["ttft_ms"] <= row["duration_ms"]


def assert_priced(row: dict[str, Any], usage: Usage, service_tier: str | None = None) -> None:
    cost = expected_cost(row["provider"], row["model"], usage, service_tier)
    assert cost > 0
    assert row["cost_usd"] == pytest.approx(cost, rel=1e-9), row["cost_note"]


def rules_applied(row: dict[str, Any]) -> list[str]:
    return json.loads(row["rules_applied"] or "[]")


def rate_limit_headers(request: RecordedRequest) -> dict[str, str]:
    assert request.response is not None
    return {k.lower(): v for k, v in request.response.headers if "ratelimit" in k.lower()}


def without_records(body: bytes, drop: Iterable[str]) -> bytes:
    """An SSE body with the records whose data is in `drop` taken out, byte for byte otherwise."""
    unwanted = set(drop)
    kept = [r for r in body.split(b"\n\n") if r and r.removeprefix(b"data: ").decode() not in unwanted]
    return b"".join(r + b"\n\n" for r in kept)


def one_new_row(proxy: Proxy, since: int) -> dict[str, Any]:
    [row] = proxy.wait_for_rows(1, since=since)
    return row


def curl_json(proxy: Proxy, url: str, body: dict[str, Any] | bytes, *args: str) -> CurlResult:
    """POST a JSON body (bytes go as they are) with curl, authenticated the way the provider wants."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    auth = "x-api-key: sk-ant-curl" if "anthropic" in url else "authorization: Bearer sk-curl"
    return curl(
        proxy, url, "-H", "content-type: application/json", "-H", auth, "--data-binary", data.decode(), *args
    )


# 1. Anthropic Messages through the SDK.


def test_anthropic_message_is_recorded_with_exact_usage_and_cost(
    fake: FakeProvider, sluice_proxy: Proxy
) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=CLAUDE_USAGE)
    with anthropic_client(sluice_proxy) as client:
        raw = client.messages.with_raw_response.create(**MESSAGE)
        message = raw.parse()

    [seen] = fake.requests
    assert seen.response is not None
    assert raw.http_response.content == seen.response.body  # the client got the fake's bytes
    assert message.content[0].text == json.loads(seen.response.body)["content"][0]["text"]
    row = one_new_row(sluice_proxy, since)
    assert (row["host"], row["method"], row["path"]) == ("api.anthropic.com", "POST", "/v1/messages")
    assert (row["provider"], row["api"], row["model"], row["stream"], row["status"]) == (
        "anthropic",
        "messages",
        MODEL,
        0,
        200,
    )
    assert row["error"] is None
    assert_tokens(row, CLAUDE_USAGE)
    assert_priced(row, CLAUDE_USAGE, "standard")
    assert row["request_id"] == seen.response.header("request-id") == message._request_id
    assert row["response_id"] == message.id
    assert row["stop_reason"] == "end_turn"
    assert row["service_tier"] == "standard"
    assert_timings(row)


def test_anthropic_stream_reaches_the_client_byte_for_byte_and_is_recorded(
    fake: FakeProvider, sluice_proxy: Proxy
) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=CLAUDE_USAGE, text="one two three four", split=True)
    with (
        anthropic_client(sluice_proxy) as client,
        client.messages.with_streaming_response.create(**MESSAGE, stream=True) as response,
    ):
        received = b"".join(response.iter_bytes())

    [seen] = fake.requests
    assert seen.response is not None
    assert received == seen.response.body
    kinds = [kind for kind, _ in sse_records(received)]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    start = json.loads(sse_records(received)[0][1])["message"]
    row = one_new_row(sluice_proxy, since)
    assert (row["host"], row["provider"], row["api"], row["model"]) == (
        "api.anthropic.com",
        "anthropic",
        "messages",
        MODEL,
    )
    assert (row["stream"], row["status"], row["error"]) == (1, 200, None)
    assert_tokens(row, CLAUDE_USAGE)
    assert_priced(row, CLAUDE_USAGE, "standard")
    assert row["request_id"] == seen.response.header("request-id")
    assert row["response_id"] == start["id"]
    assert row["stop_reason"] == "end_turn"
    assert_timings(row)
    assert row["response_bytes"] == len(received)


async def _async_stream(proxy: Proxy) -> anthropic.types.Message:
    async with (
        async_anthropic_client(proxy) as client,
        client.messages.stream(**MESSAGE) as stream,
    ):
        return await stream.get_final_message()


def test_async_anthropic_stream_is_recorded(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=CLAUDE_USAGE, text="async hello")
    final = asyncio.run(_async_stream(sluice_proxy))

    assert final.content[0].text == "async hello"
    assert final.usage.output_tokens == CLAUDE_USAGE.output_tokens
    row = one_new_row(sluice_proxy, since)
    assert (row["stream"], row["status"], row["model"], row["error"]) == (1, 200, MODEL, None)
    assert_tokens(row, CLAUDE_USAGE)
    assert_priced(row, CLAUDE_USAGE, "standard")
    assert row["response_id"] == final.id
    assert row["request_id"] == fake.requests[0].response.header("request-id")
    assert_timings(row)


# 2. Cumulative message_delta usage; thinking blocks.


def test_cumulative_message_delta_usage_is_the_last_value_not_a_sum(
    fake: FakeProvider, sluice_proxy: Proxy
) -> None:
    since = sluice_proxy.mark()
    usage = Usage(input_tokens=50, cache_read_tokens=7, output_tokens=10)
    fake.next(usage=usage, message_deltas=2)
    with anthropic_client(sluice_proxy) as client, client.messages.stream(**MESSAGE) as stream:
        final = stream.get_final_message()

    deltas = [
        json.loads(data)["usage"]["output_tokens"]
        for kind, data in sse_records(fake.requests[0].response.body)
        if kind == "message_delta"
    ]
    assert deltas == [5, 10]  # the fake restates the running total
    assert final.usage.output_tokens == 10
    row = one_new_row(sluice_proxy, since)
    assert row["output_tokens"] == 10
    assert_tokens(row, usage)
    assert_priced(row, usage, "standard")


def test_thinking_blocks_stream_through_and_are_recorded(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    since = sluice_proxy.mark()
    usage = Usage(input_tokens=30, output_tokens=120)
    fake.next(
        usage=usage, thinking="Let me think about this carefully.", text="The answer.", message_deltas=3
    )
    with anthropic_client(sluice_proxy) as client, client.messages.stream(**MESSAGE) as stream:
        final = stream.get_final_message()

    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think about this carefully."
    assert final.content[0].signature == "c2lnbmF0dXJl"
    assert final.content[1].text == "The answer."
    row = one_new_row(sluice_proxy, since)
    assert (row["status"], row["error"], row["stop_reason"]) == (200, None, "end_turn")
    assert_tokens(row, usage)
    assert_timings(row)


# 3. count_tokens.


def test_count_tokens_is_recorded_as_counted_not_billed(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=Usage(input_tokens=4321))
    with anthropic_client(sluice_proxy) as client:
        counted = client.messages.count_tokens(model=MODEL, messages=MESSAGE["messages"])

    assert counted.input_tokens == 4321
    row = one_new_row(sluice_proxy, since)
    assert (row["api"], row["path"], row["status"]) == ("count_tokens", "/v1/messages/count_tokens", 200)
    assert row["counted_tokens"] == 4321
    assert row["cost_usd"] == 0
    assert not row["input_tokens"]  # a count is not billed input
    assert not row["output_tokens"]


# 4. OpenAI Chat Completions and Responses.


def test_openai_chat_is_recorded_with_cached_tokens_moved_out_of_input(
    fake: FakeProvider, sluice_proxy: Proxy
) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=GPT_USAGE, model=REASONING_MODEL)
    with openai_client(sluice_proxy) as client:
        raw = client.chat.completions.with_raw_response.create(**{**CHAT, "model": REASONING_MODEL})
        completion = raw.parse()

    [seen] = fake.requests
    assert raw.http_response.content == seen.response.body
    assert completion.usage.prompt_tokens == 100
    row = one_new_row(sluice_proxy, since)
    assert (row["host"], row["provider"], row["api"], row["model"], row["stream"], row["status"]) == (
        "api.openai.com",
        "openai",
        "chat",
        REASONING_MODEL,
        0,
        200,
    )
    assert (row["input_tokens"], row["cache_read_tokens"]) == (40, 60)
    assert (row["output_tokens"], row["reasoning_tokens"]) == (25, 12)
    assert_priced(row, GPT_USAGE, "default")
    assert row["request_id"] == seen.response.header("x-request-id")
    assert row["response_id"] == completion.id
    assert row["stop_reason"] == "stop"
    assert_timings(row)


def test_openai_chat_stream_with_client_asked_usage_is_untouched(
    fake: FakeProvider, sluice_proxy: Proxy
) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=GPT_USAGE, text="alpha beta")
    sent = []
    hooks = {"request": [lambda request: sent.append(request)]}
    with (
        openai_client(sluice_proxy, httpx_kwargs={"event_hooks": hooks}) as client,
        client.chat.completions.with_streaming_response.create(
            **CHAT, stream=True, stream_options={"include_usage": True}
        ) as response,
    ):
        received = b"".join(response.iter_bytes())

    [seen] = fake.requests
    assert seen.body == sent[0].content  # nothing to change: the body went out as the client wrote it
    assert received == seen.response.body  # the usage chunk the client asked for is there
    assert any(json.loads(d).get("choices") == [] for _, d in sse_records(received) if d != "[DONE]")
    row = one_new_row(sluice_proxy, since)
    assert (row["api"], row["stream"], row["status"], row["error"]) == ("chat", 1, 200, None)
    assert (row["input_tokens"], row["cache_read_tokens"]) == (40, 60)
    assert (row["output_tokens"], row["reasoning_tokens"]) == (25, 12)
    assert_priced(row, GPT_USAGE, "default")
    assert row["request_id"] == seen.response.header("x-request-id")
    assert row["stop_reason"] == "stop"
    assert_timings(row)


def test_openai_chat_stream_without_usage_is_metered_and_the_client_never_sees_the_usage_chunk(
    fake: FakeProvider, sluice_proxy: Proxy
) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=GPT_USAGE, text="gamma delta epsilon", split=True)
    fake.next(usage=GPT_USAGE, text="gamma delta epsilon")
    with openai_client(sluice_proxy) as client:
        with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as response:
            received = b"".join(response.iter_bytes())
        chunks = list(client.chat.completions.create(**CHAT, stream=True))

    first, second = fake.requests
    # sluice asked for the usage on the client's behalf, in the clear so the extra chunk can be cut...
    assert first.json()["stream_options"] == {"include_usage": True}
    assert first.header("accept-encoding") == "identity"
    # ...and cut exactly that chunk back out: the rest is the fake's bytes.
    usage_records = [
        data
        for _, data in sse_records(first.response.body)
        if data != "[DONE]" and not json.loads(data)["choices"]
    ]
    assert len(usage_records) == 1
    assert received == without_records(first.response.body, usage_records)
    assert b'"choices":[]' not in received
    assert chunks and all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "gamma delta epsilon"
    assert second.json()["stream_options"] == {"include_usage": True}

    rows = sluice_proxy.wait_for_rows(2, since=since)
    assert len(rows) == 2
    for row in rows:
        assert (row["api"], row["stream"], row["status"], row["error"]) == ("chat", 1, 200, None)
        assert (row["input_tokens"], row["cache_read_tokens"]) == (40, 60)
        assert (row["output_tokens"], row["reasoning_tokens"]) == (25, 12)
        assert_priced(row, GPT_USAGE, "default")
        assert "stream_usage" in rules_applied(row)
        assert_timings(row)


async def _async_chat_chunks(proxy: Proxy, extra: dict[str, Any]) -> list[Any]:
    async with async_openai_client(proxy) as client:
        stream = await client.chat.completions.create(**CHAT, stream=True, **extra)
        return [chunk async for chunk in stream]


@pytest.mark.parametrize(
    "extra",
    [{}, {"stream_options": {"include_usage": False}}],
    ids=["no-stream-options", "include-usage-false"],
)
def test_async_openai_chat_stream_without_usage_gets_no_empty_choices(
    fake: FakeProvider, sluice_proxy: Proxy, extra: dict[str, Any]
) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=GPT_USAGE, text="async words here")
    chunks = asyncio.run(_async_chat_chunks(sluice_proxy, extra))

    assert fake.requests[0].json()["stream_options"] == {"include_usage": True}
    assert chunks and all(chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "async words here"
    row = one_new_row(sluice_proxy, since)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (40, 60, 25)
    assert row["reasoning_tokens"] == 12


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openai_responses_are_recorded(fake: FakeProvider, sluice_proxy: Proxy, stream: bool) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=GPT_USAGE, text="responses text")
    with openai_client(sluice_proxy) as client:
        if stream:
            events = list(client.responses.create(model="gpt-5", input="hi", stream=True))
            assert events[-1].type == "response.completed"
            response = events[-1].response
        else:
            response = client.responses.create(model="gpt-5", input="hi")

    assert response.output_text == "responses text"
    assert response.usage.input_tokens == 100
    row = one_new_row(sluice_proxy, since)
    assert (row["host"], row["provider"], row["api"], row["path"]) == (
        "api.openai.com",
        "openai",
        "responses",
        "/v1/responses",
    )
    assert (row["model"], row["stream"], row["status"], row["error"]) == ("gpt-5", int(stream), 200, None)
    assert (row["input_tokens"], row["cache_read_tokens"]) == (40, 60)
    assert (row["output_tokens"], row["reasoning_tokens"]) == (25, 12)
    assert_priced(row, GPT_USAGE, "default")
    assert row["response_id"] == response.id
    assert row["stop_reason"] == "completed"
    assert row["request_id"] == fake.requests[0].response.header("x-request-id")
    assert_timings(row)


# 5. curl, plain and streamed, compressed.


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_curl_call_is_relayed_and_recorded(fake: FakeProvider, sluice_proxy: Proxy, stream: bool) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=CLAUDE_USAGE)
    result = curl_json(
        sluice_proxy, ANTHROPIC_URL, {**MESSAGE, "stream": stream}, *(["-N"] if stream else [])
    )

    [seen] = fake.requests
    assert (result.status, result.returncode) == (200, 0)
    assert result.body == seen.response.body
    assert seen.header("x-api-key") == "sk-ant-curl"
    row = one_new_row(sluice_proxy, since)
    assert (row["stream"], row["status"], row["error"]) == (int(stream), 200, None)
    assert_tokens(row, CLAUDE_USAGE)
    assert_priced(row, CLAUDE_USAGE, "standard")
    assert row["request_id"] == result.header("request-id") == seen.response.header("request-id")


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_curl_compressed_stream_is_decoded_by_curl_and_metered(
    fake: FakeProvider, sluice_proxy: Proxy, encoding: str
) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=CLAUDE_USAGE, encoding=encoding, split=True, text="compressed words flow here")
    result = curl_json(sluice_proxy, ANTHROPIC_URL, {**MESSAGE, "stream": True}, "-N", "--compressed")

    [seen] = fake.requests
    assert (result.status, result.returncode) == (200, 0), result.stderr
    assert result.header("content-encoding") == encoding  # passed through as the provider chose
    assert result.body == seen.response.body  # curl decoded it: the fake's SSE, exactly
    row = one_new_row(sluice_proxy, since)
    assert (row["stream"], row["status"], row["error"]) == (1, 200, None)
    assert_tokens(row, CLAUDE_USAGE)
    assert_priced(row, CLAUDE_USAGE, "standard")
    assert row["stop_reason"] == "end_turn"


def test_curl_gzip_json_response_is_metered(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=CLAUDE_USAGE, encoding="gzip", times=2)
    raw = curl_json(sluice_proxy, ANTHROPIC_URL, MESSAGE)
    decoded = curl_json(sluice_proxy, ANTHROPIC_URL, MESSAGE, "--compressed")

    first, second = fake.requests
    assert raw.header("content-encoding") == "gzip"
    assert gzip.decompress(raw.body) == first.response.body
    assert decoded.header("content-encoding") == "gzip"
    assert decoded.body == second.response.body
    rows = sluice_proxy.wait_for_rows(2, since=since)
    assert len(rows) == 2
    for row in rows:
        assert (row["stream"], row["status"], row["error"]) == (0, 200, None)
        assert_tokens(row, CLAUDE_USAGE)
        assert_priced(row, CLAUDE_USAGE, "standard")


# 6. Streams are not buffered.


def test_anthropic_stream_reaches_the_client_while_the_provider_is_still_sending(
    fake: FakeProvider, sluice_proxy: Proxy
) -> None:
    since = sluice_proxy.mark()
    # message_start, ping, content_block_start, then the provider goes quiet until the test lets it go on:
    # no timing to guess on a loaded machine.
    resume = threading.Event()
    fake.next(usage=CLAUDE_USAGE, stall_after=3, stall_seconds=60, resume=resume)
    with (
        anthropic_client(sluice_proxy) as client,
        client.messages.create(**MESSAGE, stream=True) as stream,
    ):
        events = iter(stream)
        first = [next(events).type for _ in range(2)]  # the SDK skips the ping
        outcome_while_reading = fake.requests[0].response.outcome
        resume.set()
        rest = [event.type for event in events]

    assert first == ["message_start", "content_block_start"]
    assert outcome_while_reading == "pending"  # the fake had not finished: the proxy did not wait for it
    assert rest[-1] == "message_stop"
    # The client can read message_stop before the fake's thread returns from its last send.
    assert fake.requests[0].response.wait_ended()
    assert fake.requests[0].response.outcome == "complete"
    row = one_new_row(sluice_proxy, since)
    assert (row["status"], row["error"]) == (200, None)
    assert_tokens(row, CLAUDE_USAGE)
    assert_timings(row)


def test_compressed_openai_stream_is_not_buffered_either(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    since = sluice_proxy.mark()
    # The provider goes quiet for far longer than the test takes: the first events can only reach the
    # client if the proxy passes them on as they come.
    fake.next(usage=GPT_USAGE, encoding="gzip", stall_after=3, stall_seconds=30, text="one two three four")
    with openai_client(sluice_proxy) as client:
        stream = client.responses.create(model="gpt-5", input="hi", stream=True)
        with stream:
            events = iter(stream)
            first = [next(events) for _ in range(3)]
            outcome_while_reading = fake.requests[0].response.outcome

    assert fake.requests[0].response.header("content-encoding") == "gzip"
    assert [event.type for event in first] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ]
    assert outcome_while_reading == "pending"
    row = one_new_row(sluice_proxy, since)  # the client hung up during the stall
    assert (row["stream"], row["status"]) == (1, 200)
    assert row["response_id"] == first[0].response.id
    assert row["error"] and row["error"].startswith("connection lost")


# 7. Request bodies nothing applies to go upstream byte for byte.


UNTOUCHED_BODIES = {
    "anthropic-messages": (
        ANTHROPIC_URL,
        b'{  "messages" :[ {"role":"user",\n\t"content": "caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\/ slash"}],'
        b'\r\n "max_tokens":  1.0e2 , "model":"claude-opus-4-1"   ,"metadata":{"user_id":"u-1"}}\n',
        "claude-opus-4-1",
    ),
    "anthropic-stream": (
        ANTHROPIC_URL,
        b'{"stream" : true,"model":"claude-opus-4-1","max_tokens":100000000000000000000000001,'
        b'"messages":[{"role":"user","content":[{"type":"text","text":"\\u0000\\t\\u2028"}]}]}',
        "claude-opus-4-1",
    ),
    "openai-chat": (
        CHAT_URL,
        b'{"temperature":0.10, "messages":[{"content":"\\u00fcber","role":"user"}],\n"model":"gpt-4o-mini"}',
        "gpt-4o-mini",
    ),
    "openai-responses-stream": (
        "https://api.openai.com/v1/responses",
        b'{ "input" : "hi\\n", "stream":true, "model" : "gpt-5", "top_p": 1E0 }',
        "gpt-5",
    ),
}


@pytest.mark.parametrize("case", list(UNTOUCHED_BODIES))
def test_request_body_is_forwarded_byte_for_byte(fake: FakeProvider, sluice_proxy: Proxy, case: str) -> None:
    since = sluice_proxy.mark()
    url, body, model = UNTOUCHED_BODIES[case]
    result = curl_json(sluice_proxy, url, body)

    assert (result.status, result.returncode) == (200, 0)
    [seen] = fake.requests
    assert seen.body == body
    assert result.body == seen.response.body
    row = one_new_row(sluice_proxy, since)
    assert (row["model"], row["status"], row["error"]) == (model, 200, None)
    assert row["request_bytes"] == len(body)
    body_rules = [e for e in rules_applied(row) if not e.startswith("note:") and "_headers_dropped:" not in e]
    assert body_rules == []


def test_malformed_request_body_is_forwarded_and_noted(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    since = sluice_proxy.mark()
    body = b'{"model": "claude-opus-4-1", "messages": [{"role": "user", "content": "hi"}'
    result = curl_json(sluice_proxy, ANTHROPIC_URL, body)

    [seen] = fake.requests
    assert seen.body == body
    assert (result.status, result.body) == (400, seen.response.body)
    assert json.loads(result.body)["error"]["message"] == "Request body is not valid JSON."
    row = one_new_row(sluice_proxy, since)
    assert row["status"] == 400
    assert any("request body is not JSON" in note for note in rules_applied(row)), row["rules_applied"]
    assert row["error"] and "invalid_request_error" in row["error"]


# 8. Bad responses.


def test_malformed_json_response_reaches_the_client_untouched(
    fake: FakeProvider, sluice_proxy: Proxy
) -> None:
    since = sluice_proxy.mark()
    fake.next(malformed=True)
    result = curl_json(sluice_proxy, ANTHROPIC_URL, MESSAGE)

    [seen] = fake.requests
    assert (result.status, result.body) == (200, seen.response.body)
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.body)
    row = one_new_row(sluice_proxy, since)
    assert row["status"] == 200
    assert row["error"] and "malformed JSON" in row["error"]


def test_truncated_stream_is_recorded_with_partial_usage(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=CLAUDE_USAGE, truncate_after=5)
    with (
        anthropic_client(sluice_proxy) as client,
        # The cut reaches the client as a cut, not as a clean end of the body.
        pytest.raises(Exception, match="incomplete chunked read"),
        client.messages.stream(**MESSAGE) as stream,
    ):
        stream.get_final_message()

    assert fake.requests[0].response.outcome == "truncated"
    row = one_new_row(sluice_proxy, since)
    assert (row["stream"], row["status"]) == (1, 200)
    # message_start came through: its usage is the partial usage.
    assert (row["input_tokens"], row["cache_read_tokens"]) == (1234, 5678)
    assert (row["cache_write_5m_tokens"], row["cache_write_1h_tokens"]) == (310, 420)
    assert row["output_tokens"] != CLAUDE_USAGE.output_tokens  # the final count never arrived
    assert row["error"], "a stream cut before message_stop must say so"
    assert any(word in row["error"] for word in ("message_stop", "incomplete", "ended")), row["error"]


def test_in_stream_error_event_is_recorded(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=CLAUDE_USAGE, error_after=4)
    with (
        anthropic_client(sluice_proxy) as client,
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(**MESSAGE) as stream,
    ):
        stream.get_final_message()

    assert caught.value.body["error"]["type"] == "overloaded_error"
    row = one_new_row(sluice_proxy, since)
    assert (row["stream"], row["status"]) == (1, 200)
    assert "overloaded_error" in row["error"]
    assert row["input_tokens"] == CLAUDE_USAGE.input_tokens


def test_upstream_reset_mid_stream_is_recorded(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=GPT_USAGE, reset_after=6, text="one two three four five six")
    with openai_client(sluice_proxy) as client, pytest.raises(openai.APIConnectionError):
        list(client.responses.create(model="gpt-5", input="hi", stream=True))

    assert fake.requests[0].response.outcome == "reset"
    row = one_new_row(sluice_proxy, since)
    assert row["stream"] == 1
    assert row["error"] and row["error"].startswith("connection lost")
    assert row["response_id"] and row["response_id"].startswith("resp_")  # partial: what arrived is kept
    assert row["model"] == "gpt-5"


def test_upstream_reset_mid_anthropic_stream_keeps_partial_usage(
    fake: FakeProvider, sluice_proxy: Proxy
) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=CLAUDE_USAGE, reset_after=5)
    with (
        anthropic_client(sluice_proxy) as client,
        pytest.raises(Exception, match="incomplete chunked read"),
        client.messages.stream(**MESSAGE) as stream,
    ):
        stream.get_final_message()

    row = one_new_row(sluice_proxy, since)
    assert row["error"] and row["error"].startswith("connection lost")
    assert (row["input_tokens"], row["cache_read_tokens"]) == (1234, 5678)
    assert row["status"] == 200


def test_client_disconnect_mid_stream_still_writes_the_row(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    since = sluice_proxy.mark()
    fake.next(usage=CLAUDE_USAGE, stall_after=4, stall_seconds=10)
    with anthropic_client(sluice_proxy) as client:
        stream = client.messages.create(**MESSAGE, stream=True)
        events = iter(stream)
        got = [next(events).type for _ in range(2)]
        stream.close()  # the client hangs up while the provider is still generating

    assert got == ["message_start", "content_block_start"]
    row = one_new_row(sluice_proxy, since)
    assert (row["stream"], row["status"]) == (1, 200)
    assert (row["input_tokens"], row["cache_read_tokens"]) == (1234, 5678)
    assert row["error"] and row["error"].startswith("connection lost")
    assert (
        row["response_id"] == json.loads(sse_records(fake.requests[0].response.body)[0][1])["message"]["id"]
    )


ERRORS = [
    ("anthropic", 429, "rate_limit_error", "1"),
    ("anthropic", 529, "overloaded_error", "1"),
    ("anthropic", 500, "api_error", None),
    ("openai", 429, "requests", "1"),
    ("openai", 500, "server_error", None),
]


@pytest.mark.parametrize(("provider", "status", "kind", "retry_after"), ERRORS)
def test_error_envelopes_pass_unmodified_and_are_recorded(
    fake: FakeProvider, sluice_proxy: Proxy, provider: str, status: int, kind: str, retry_after: str | None
) -> None:
    since = sluice_proxy.mark()
    fake.next(status=status)
    url, body = (ANTHROPIC_URL, MESSAGE) if provider == "anthropic" else (CHAT_URL, CHAT)
    result = curl_json(sluice_proxy, url, body)

    [seen] = fake.requests
    assert result.status == status
    assert result.body == seen.response.body  # byte for byte: clients match on the wording
    assert result.header("retry-after") == retry_after == seen.response.header("retry-after")
    if provider == "anthropic" and retry_after:
        assert result.header("x-should-retry") == "true"
    row = one_new_row(sluice_proxy, since)
    assert row["status"] == status
    assert row["error"] and row["error"].startswith(f"{kind}: ")
    assert row["error"].endswith(json.loads(seen.response.body)["error"]["message"])
    assert json.loads(row["rate_limits"]) == rate_limit_headers(seen)


def test_sdk_sees_the_providers_429_unchanged(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    since = sluice_proxy.mark()
    fake.next(status=429, error_message="Number of request tokens has exceeded your per-minute rate limit")
    with anthropic_client(sluice_proxy) as client, pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(**MESSAGE)

    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.response.content == fake.requests[0].response.body
    assert caught.value.request_id == fake.requests[0].response.header("request-id")
    row = one_new_row(sluice_proxy, since)
    assert (row["status"], row["request_id"]) == (429, caught.value.request_id)
    assert row["error"] == (
        "rate_limit_error: Number of request tokens has exceeded your per-minute rate limit"
    )


# 9. Rate limits, and credentials never stored.


def _db_files(db_path: Path) -> list[Path]:
    return [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]


def _rate_limit_table(db_path: Path, host: str, credential: str) -> dict[str, tuple[str, str]]:
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        found = conn.execute(
            "select header, value, call_id from rate_limits where host = ? and credential = ?",
            (host, credential),
        ).fetchall()
    finally:
        conn.close()
    return {header: (value, call_id) for header, value, call_id in found}


def test_anthropic_rate_limits_are_recorded_per_credential_and_the_key_never_stored(
    fake: FakeProvider, sluice_proxy: Proxy
) -> None:
    key = "sk-ant-api03-SECRETKEY-e2e-ratelimits-0123456789abcdef"
    other_key = "sk-ant-api03-OTHERKEY-e2e-ratelimits-fedcba9876543210"
    since = sluice_proxy.mark()
    with anthropic_client(sluice_proxy, api_key=key) as client:
        client.messages.create(**MESSAGE)
        client.messages.create(**MESSAGE)
    with anthropic_client(sluice_proxy, api_key=other_key) as client:
        client.messages.create(**MESSAGE)

    first, second, third = fake.requests
    assert second.header("authorization") == f"Bearer {key}"
    rows = sluice_proxy.wait_for_rows(3, since=since)
    assert len(rows) == 3
    by_request = {row["request_id"]: row for row in rows}
    row1, row2, row3 = (by_request[r.response.header("request-id")] for r in (first, second, third))
    # Every rate-limit header of each response, the unified family included, in the row.
    for row, request in ((row1, first), (row2, second), (row3, third)):
        sent = rate_limit_headers(request)
        assert any(name.startswith("anthropic-ratelimit-unified-") for name in sent)
        assert json.loads(row["rate_limits"]) == sent
    # One fingerprint per key; never the key.
    assert row1["credential"] == row2["credential"] != row3["credential"]
    for row in (row1, row3):
        assert row["credential"] and row["credential"] != "none"
        assert key not in row["credential"] and other_key not in row["credential"]
    # The table holds the latest state per (host, credential): the second call's values.
    table = _rate_limit_table(sluice_proxy.db_path, "api.anthropic.com", row1["credential"])
    assert {name: value for name, (value, _) in table.items()} == rate_limit_headers(second)
    assert {call_id for _, call_id in table.values()} == {row2["id"]}
    assert (
        table["anthropic-ratelimit-requests-remaining"][0]
        != rate_limit_headers(first)["anthropic-ratelimit-requests-remaining"]
    )
    other = _rate_limit_table(sluice_proxy.db_path, "api.anthropic.com", row3["credential"])
    assert {name: value for name, (value, _) in other.items()} == rate_limit_headers(third)
    # Not a byte of either key in the database files (WAL included) or the log.
    for path in _db_files(sluice_proxy.db_path):
        data = path.read_bytes()
        assert key.encode() not in data and other_key.encode() not in data, path.name
        assert b"SECRETKEY" not in data and b"OTHERKEY" not in data, path.name
    assert "SECRETKEY" not in sluice_proxy.log_text()


def test_openai_rate_limits_are_recorded(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    key = "sk-proj-OPENAISECRET-e2e-0123456789"
    since = sluice_proxy.mark()
    with openai_client(sluice_proxy, api_key=key) as client:
        client.chat.completions.create(**CHAT)

    [seen] = fake.requests
    row = one_new_row(sluice_proxy, since)
    sent = rate_limit_headers(seen)
    assert set(sent) == {
        f"x-ratelimit-{part}-{kind}"
        for part in ("limit", "remaining", "reset")
        for kind in ("requests", "tokens")
    }
    assert json.loads(row["rate_limits"]) == sent
    table = _rate_limit_table(sluice_proxy.db_path, "api.openai.com", row["credential"])
    assert {name: value for name, (value, _) in table.items()} == sent
    for path in _db_files(sluice_proxy.db_path):
        assert b"OPENAISECRET" not in path.read_bytes(), path.name


# 15. Non-LLM traffic.


def test_non_llm_traffic_passes_and_records_nothing(fake: FakeProvider, sluice_proxy: Proxy) -> None:
    since = sluice_proxy.mark()
    models = curl(sluice_proxy, "https://api.openai.com/v1/models", "-H", "authorization: Bearer sk-x")
    embeddings = curl(
        sluice_proxy,
        "https://api.openai.com/v1/embeddings",
        "--json",
        json.dumps({"model": "text-embedding-3-small", "input": "hi"}),
    )
    listing = curl(sluice_proxy, "https://api.anthropic.com/v1/models")
    # A metered call after them: the writer is FIFO, so once its row is there any earlier row would be too.
    with anthropic_client(sluice_proxy) as client:
        client.messages.create(**MESSAGE)

    requests = fake.requests
    assert [(r.method, r.path) for r in requests] == [
        ("GET", "/v1/models"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("POST", "/v1/messages"),
    ]
    for result, request in zip((models, embeddings, listing), requests, strict=False):
        assert (result.status, result.body) == (request.response.status, request.response.body)
    [row] = sluice_proxy.wait_for_rows(1, since=since)
    assert row["path"] == "/v1/messages"
