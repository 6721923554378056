from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.providers import WireFormat, provider, wire_format
from rules.usage import Reading, StreamReader, Usage, read_response_body
from tests.rules.answers import fixture, read_stream, sse
from tests.rules.nesting import nested

OPENAI_500 = (
    "An error occurred while processing your request. You can retry your request, or contact us through our "
    "help center at help.openai.com if the error persists."
)

# (fixture, api, what the user should see, bytes that start the first output-bearing record or None)
STREAMS = [
    (
        "anthropic_messages_stream.sse",
        "messages",
        Reading(
            model="claude-sonnet-4-5-20250929",
            response_id="msg_01Hq7rW3sX9kP2mN4vB6cT8e",
            stop_reason="tool_use",
            usage=Usage(
                input_tokens=472,
                cache_read_tokens=0,
                cache_write_5m_tokens=0,
                cache_write_1h_tokens=0,
                output_tokens=189,
                service_tier="standard",
            ),
            usage_seen=True,
            complete=True,
        ),
        b"event: content_block_delta\n",
    ),
    (
        "anthropic_stream_overloaded.sse",
        "messages",
        Reading(
            model="claude-opus-4-1-20250805",
            response_id="msg_01Vb2nQ8rT5yU3iO9pA1sD4f",
            # Only message_start's usage arrived; its output_tokens is the placeholder.
            usage=Usage(
                input_tokens=25,
                cache_read_tokens=0,
                cache_write_5m_tokens=0,
                cache_write_1h_tokens=0,
                output_tokens=1,
                service_tier="standard",
            ),
            usage_seen=True,
            error="overloaded_error: Overloaded",
        ),
        b"event: content_block_delta\n",
    ),
    (
        "anthropic_stream_cache_websearch.sse",
        "messages",
        Reading(
            model="claude-opus-4-6",
            response_id="msg_01Ks4dF6gH8jK0lZ2xC4vB6n",
            stop_reason="end_turn",
            usage=Usage(
                input_tokens=10682,  # message_delta's cumulative count replaces message_start's 9
                cache_read_tokens=18044,
                cache_write_5m_tokens=1210,
                cache_write_1h_tokens=5000,
                output_tokens=417,
                web_search_requests=1,
                service_tier="standard",
                speed="fast",
            ),
            usage_seen=True,
            complete=True,
        ),
        b"event: content_block_delta\n",
    ),
    (
        "openai_chat_stream_usage.sse",
        "chat",
        Reading(
            model="o4-mini-2025-04-16",
            response_id="chatcmpl-C1aRedacted7hK2mP9qL4xV8nB3",
            stop_reason="stop",
            usage=Usage(
                input_tokens=1543 - 1280,
                cache_read_tokens=1280,
                output_tokens=612,
                reasoning_tokens=448,
                service_tier="default",
            ),
            usage_seen=True,
            complete=True,
        ),
        b'"choices":[{"index":0,"delta":{"content":"The"}',
    ),
    (
        "openai_chat_stream_no_usage.sse",
        "chat",
        Reading(
            model="gpt-4.1-2025-04-14",
            response_id="chatcmpl-C1bRedacted2Yt6Gh0Jk3Lz5Xc",
            stop_reason="tool_calls",
            usage=Usage(service_tier="default"),
            complete=True,
        ),
        b"data: ",  # the first chunk already names the tool
    ),
    (
        "openai_chat_stream_error.sse",
        "chat",
        Reading(
            model="gpt-4o-2024-08-06",
            response_id="chatcmpl-C1cRedacted9Pq1Wd4Rf7Tg0Yh",
            usage=Usage(service_tier="default"),
            error="server_error: The server had an error while processing your request. Sorry about that!",
        ),
        b'"choices":[{"index":0,"delta":{"content":"Once upon"}',
    ),
    (
        "openai_responses_stream_completed.sse",
        "responses",
        Reading(
            model="gpt-5-mini-2025-08-07",
            response_id="resp_68a1Redacted0c5d2e4f6a8b0c2d4e6f8a0b",
            stop_reason="completed",
            usage=Usage(
                input_tokens=1320 - 1024,
                cache_read_tokens=1024,
                output_tokens=356,
                reasoning_tokens=192,
                service_tier="default",  # the tier that served it, not the "auto" asked for
            ),
            usage_seen=True,
            complete=True,
        ),
        b"event: response.output_text.delta\n",
    ),
    (
        "openai_responses_stream_incomplete.sse",
        "responses",
        Reading(
            model="gpt-5-mini-2025-08-07",
            response_id="resp_68a2Redacted4b6c8d0e2f4a6b8c0d2e4f6a",
            stop_reason="incomplete",
            usage=Usage(
                input_tokens=58,
                cache_read_tokens=0,
                output_tokens=64,
                reasoning_tokens=64,
                service_tier="default",
            ),
            usage_seen=True,
            complete=True,
        ),
        None,  # all 64 output tokens went to reasoning: nothing was ever streamed
    ),
    (
        "openai_responses_stream_failed.sse",
        "responses",
        Reading(
            model="gpt-5-mini-2025-08-07",
            response_id="resp_68a3Redacted1d3e5f7a9b1c3d5e7f9a1b3c",
            stop_reason="failed",
            usage=Usage(service_tier="default"),
            error=f"server_error: {OPENAI_500}",
            complete=True,
        ),
        None,
    ),
    (
        "openai_responses_stream_error_event.sse",
        "responses",
        Reading(
            model="gpt-5-mini-2025-08-07",
            response_id="resp_68a4Redacted8c0d2e4f6a8b0c2d4e6f8a0b",
            usage=Usage(service_tier="auto"),
            error="rate_limit_exceeded: Rate limit reached for gpt-5-mini in organization org-REDACTED "
            "on tokens per min (TPM): Limit 200000, Used 199120, Requested 4211. Please try again in 999ms.",
        ),
        None,
    ),
]
STREAM_IDS = [s[0] for s in STREAMS]
TERMINAL = {"messages": "message_stop", "chat": "[DONE]", "responses": "response.completed"}


def first_output_end(stream: bytes, marker: bytes | None) -> int | None:
    """Offset just past the blank line that completes the first output-bearing record."""
    if marker is None:
        return None
    return stream.index(b"\n\n", stream.index(marker)) + 2


@pytest.mark.parametrize(("name", "api", "expected", "marker"), STREAMS, ids=STREAM_IDS)
def test_stream_reading(name: str, api: str, expected: Reading, marker: bytes | None) -> None:
    reading, firsts = read_stream(api, fixture(name))
    assert reading == expected
    assert firsts == [marker is not None]


@pytest.mark.parametrize(("name", "api", "expected", "marker"), STREAMS, ids=STREAM_IDS)
def test_stream_split_at_every_byte(name: str, api: str, expected: Reading, marker: bytes | None) -> None:
    stream = fixture(name)
    output_end = first_output_end(stream, marker)
    for cut in range(len(stream) + 1):
        reading, firsts = read_stream(api, stream[:cut], stream[cut:])
        assert reading == expected, cut
        if output_end is None:
            assert firsts == [False, False], cut
        else:
            assert firsts == [cut >= output_end, cut < output_end], cut


@pytest.mark.parametrize(("name", "api", "expected", "marker"), STREAMS, ids=STREAM_IDS)
def test_stream_fed_byte_by_byte(name: str, api: str, expected: Reading, marker: bytes | None) -> None:
    stream = fixture(name)
    reading, firsts = read_stream(api, *[stream[i : i + 1] for i in range(len(stream))])
    assert reading == expected
    output_end = first_output_end(stream, marker)
    assert [i + 1 for i, first in enumerate(firsts) if first] == ([] if output_end is None else [output_end])


@pytest.mark.parametrize(("name", "api", "expected", "marker"), STREAMS, ids=STREAM_IDS)
def test_stream_in_random_chunks(name: str, api: str, expected: Reading, marker: bytes | None) -> None:
    stream = fixture(name)
    rng = random.Random(name)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(2, 30)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        reading, firsts = read_stream(api, *chunks)
        assert reading == expected
        assert firsts.count(True) == (marker is not None)


@pytest.mark.parametrize(("name", "api", "expected", "marker"), STREAMS, ids=STREAM_IDS)
def test_stream_cut_short_keeps_partial_reading(
    name: str, api: str, expected: Reading, marker: bytes | None
) -> None:
    stream = fixture(name)
    # Every fixture's last record is the one that settles it: without it the stream just stopped.
    for cut in range(0, len(stream), 5):
        reading, _ = read_stream(api, stream[:cut])
        assert not reading.complete
        assert reading.error == f"stream ended before {TERMINAL[api]}"
        assert reading.model in (None, expected.model)


@pytest.mark.parametrize(
    "name",
    [n for n in STREAM_IDS if n.startswith("anthropic") or "responses" in n],
)
def test_events_named_only_in_their_json_read_the_same(name: str) -> None:
    api = next(s[1] for s in STREAMS if s[0] == name)
    stream = fixture(name)
    unnamed = b"".join(line for line in stream.splitlines(keepends=True) if not line.startswith(b"event:"))
    assert read_stream(api, unnamed)[0] == read_stream(api, stream)[0]


def test_partial_reading_mid_stream() -> None:
    stream = fixture("anthropic_messages_stream.sse")
    reader = StreamReader(wire_format("messages"))
    reader.feed(stream[: stream.index(b"event: content_block_start")])
    partial = reader.reading
    assert partial.model == "claude-sonnet-4-5-20250929"
    assert partial.usage.input_tokens == 472
    assert partial.usage.output_tokens == 3  # message_start's placeholder, until message_delta
    assert partial.error is None
    assert not partial.complete
    partial.usage.input_tokens = 0  # a copy: the reader is not disturbed
    reader.feed(stream[stream.index(b"event: content_block_start") :])
    assert reader.finish().usage.input_tokens == 472


def test_finish_is_idempotent_and_later_bytes_are_ignored() -> None:
    reader = StreamReader(wire_format("messages"))
    reader.feed(fixture("anthropic_messages_stream.sse"))
    first = reader.finish()
    assert reader.feed(b"event: error\ndata: {}\n\n") is False
    assert reader.finish() == first


# --- whole bodies ------------------------------------------------------------------------------------------

BODIES = [
    (
        "anthropic_message.json",
        "messages",
        200,
        Reading(
            model="claude-sonnet-4-5-20250929",
            response_id="msg_01Pz3xC5vB7nM9qW1eR3tY5u",
            stop_reason="end_turn",
            usage=Usage(
                input_tokens=21,
                cache_read_tokens=14336,
                cache_write_5m_tokens=0,
                cache_write_1h_tokens=2048,
                output_tokens=303,
                reasoning_tokens=212,
                web_search_requests=0,
                service_tier="standard",
            ),
            usage_seen=True,
            complete=True,
        ),
    ),
    ("anthropic_count_tokens.json", "count_tokens", 200, Reading(counted_tokens=2095, complete=True)),
    (
        "openai_chat_completion.json",
        "chat",
        200,
        Reading(
            model="gpt-4o-2024-08-06",
            response_id="chatcmpl-C1dRedacted5Tg8Yh1Uj4Ik7Ol",
            stop_reason="stop",
            usage=Usage(
                input_tokens=2006 - 1920,
                cache_read_tokens=1920,
                output_tokens=300,
                reasoning_tokens=0,
                service_tier="default",
            ),
            usage_seen=True,
            complete=True,
        ),
    ),
    (
        "openai_response.json",
        "responses",
        200,
        Reading(
            model="gpt-5-2025-08-07",
            response_id="resp_68a5Redacted3e5f7a9b1c3d5e7f9a1b3c5d",
            stop_reason="completed",
            usage=Usage(
                input_tokens=8722,
                cache_read_tokens=0,
                output_tokens=512,
                reasoning_tokens=384,
                web_search_requests=1,  # from tool_usage.web_search.num_requests
                service_tier="priority",
            ),
            usage_seen=True,
            complete=True,
        ),
    ),
    (
        "anthropic_error_overloaded.json",
        "messages",
        529,
        Reading(error="overloaded_error: Overloaded", complete=True),
    ),
    (
        "anthropic_error_cache_control.json",
        "messages",
        400,
        Reading(
            error="invalid_request_error: A maximum of 4 blocks with cache_control may be provided. Found 5.",
            complete=True,
        ),
    ),
    (
        "openai_error_rate_limit.json",
        "chat",
        429,
        Reading(
            error="tokens: Rate limit reached for gpt-4o in organization org-REDACTED on tokens per min "
            "(TPM): Limit 30000, Used 29812, Requested 1432. Please try again in 2.488s. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.",
            complete=True,
        ),
    ),
    (
        "openai_error_invalid_key.json",
        "responses",
        401,
        Reading(
            error="invalid_request_error: Incorrect API key provided: "
            "sk-proj-********************************************wxyz. "
            "You can find your API key at https://platform.openai.com/account/api-keys.",
            complete=True,
        ),
    ),
]


@pytest.mark.parametrize(("name", "api", "status", "expected"), BODIES, ids=[b[0] for b in BODIES])
def test_read_response_body(name: str, api: str, status: int, expected: Reading) -> None:
    assert read_response_body(wire_format(api), fixture(name), status) == expected


def test_failed_response_body() -> None:
    body = {"id": "resp_1", "status": "failed", "error": {"code": "server_error", "message": "boom"}}
    reading = read_response_body(wire_format("responses"), json.dumps(body).encode(), 200)
    assert (reading.stop_reason, reading.error) == ("failed", "server_error: boom")


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"", 200, "malformed JSON response: Expecting value: line 1 column 1 (char 0)"),
        (b'{"id": "msg_1", "usage": {', 200, "malformed JSON response: Expecting property name enclosed in "),
        (b"[1, 2]", 200, "malformed JSON response: not a JSON object"),
        (b"\xff\xfe\x00", 200, "malformed JSON response: "),
        (b"[" * 100_000, 200, "malformed JSON response: "),
        (b"<html><body>502 Bad Gateway</body></html>", 502, "HTTP 502"),
        (b'{"detail": "Not Found"}', 404, "HTTP 404"),
        (b"", 500, "HTTP 500"),
        (b'{"error": "upstream connect error"}', 503, "upstream connect error"),
        (b'{"error": {"message": "no type at all"}}', 400, "error: no type at all"),
    ],
)
def test_unusable_bodies(body: bytes, status: int, error: str) -> None:
    for api in ("messages", "count_tokens", "chat", "responses"):
        reading = read_response_body(wire_format(api), body, status)
        assert reading.error is not None
        assert reading.error.startswith(error)
        assert reading.usage == Usage()


def test_a_wire_format_without_answer_readers_is_read_as_far_as_generic_parts_go() -> None:
    """A wire format declared without `read_body`/`stream_events`: its answers are still complete or not,
    their errors still read, and a stream says it was not read rather than that it was cut short."""
    bare = WireFormat(name="bare", provider=provider("openai"), path_suffixes=("/v1/bare",))
    body = b'{"id": "x", "usage": {"input_tokens": 5}}'
    assert read_response_body(bare, body, 200) == Reading(complete=True)
    assert read_response_body(bare, b'{"error": {"type": "boom", "message": "no"}}', 200).error == "boom: no"
    assert read_response_body(bare, b'{"error": "gone"}', 502) == Reading(error="gone", complete=True)
    reader = StreamReader(bare)
    assert reader.feed(b'data: {"usage": {"input_tokens": 5}}\n\ndata: [DONE]\n\n') is False
    assert reader.finish() == Reading(error="bare streams are not read")


# --- robustness and speed ----------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(
    [
        "type",
        "message",
        "usage",
        "delta",
        "error",
        "response",
        "choices",
        "input_tokens",
        "output_tokens",
        "cache_creation",
        "prompt_tokens",
        "prompt_tokens_details",
        "model",
        "id",
        "status",
        "finish_reason",
        "stop_reason",
        "service_tier",
    ]
)
PAYLOADS = st.recursive(
    JSON,
    lambda inner: st.dictionaries(KEYS, inner, max_size=6) | st.lists(inner, max_size=3),
    max_leaves=30,
)
EVENT_NAMES = st.sampled_from(
    [
        None,
        "message_start",
        "message_delta",
        "message_stop",
        "content_block_delta",
        "error",
        "ping",
        "response.created",
        "response.completed",
        "response.failed",
        "response.output_text.delta",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["messages", "count_tokens", "chat", "responses"]),
    st.lists(st.tuples(EVENT_NAMES, PAYLOADS | st.just("[DONE]") | st.text(max_size=10)), max_size=12),
    st.integers(1, 64),
)
def test_stream_reader_never_raises(api: str, records: list[tuple[str | None, Any]], size: int) -> None:
    stream = sse(*records)
    reader = StreamReader(wire_format(api))
    for i in range(0, len(stream), size):
        reader.feed(stream[i : i + size])
    partial = reader.reading
    final = reader.finish()
    assert final.complete or final.error is not None
    assert partial.usage_seen <= final.usage_seen


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["messages", "count_tokens", "chat", "responses"]),
    PAYLOADS.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=64),
    st.sampled_from([200, 201, 400, 429, 500, 529]),
)
def test_read_response_body_never_raises(api: str, body: bytes, status: int) -> None:
    reading = read_response_body(wire_format(api), body, status)
    if status >= 400:
        assert reading.error


# --- deeply nested JSON -----------------------------------------------------------------------------------

APIS = ("messages", "count_tokens", "chat", "responses")


@settings(max_examples=60, deadline=None)
@given(value=nested(), api=st.sampled_from(APIS), status=st.sampled_from([200, 400, 529]))
def test_a_deeply_nested_body_is_read_as_malformed_never_raised(value: str, api: str, status: int) -> None:
    for body in (value, '{"usage":' + value + "}", '{"type":"error","error":' + value + "}"):
        reading = read_response_body(wire_format(api), body.encode(), status)
        assert isinstance(reading, Reading)


@settings(max_examples=60, deadline=None)
@given(value=nested(), api=st.sampled_from(APIS))
def test_deeply_nested_stream_events_never_stop_the_reader(value: str, api: str) -> None:
    reader = StreamReader(wire_format(api))
    for event in ("message_start", "message_delta", "error", "response.completed", None):
        head = f"event: {event}\n" if event else ""
        reader.feed(f'{head}data: {{"type":"{event}","message":{value}}}\n\n'.encode())
        reader.feed(f"{head}data: {value}\n\n".encode())
    assert isinstance(reader.finish(), Reading)


@pytest.mark.parametrize(
    ("name", "api"),
    [
        ("anthropic_messages_stream.sse", "messages"),
        ("openai_chat_stream_usage.sse", "chat"),
        ("openai_responses_stream_completed.sse", "responses"),
    ],
)
def test_a_watched_stream_counts_its_output_and_stops_where_the_watch_says(name: str, api: str) -> None:
    from rules.transcript import reassemble

    stream = fixture(name)
    wire = wire_format(api)
    written = sum(len(part.text) for part in reassemble(wire, stream, streamed=True).parts)
    whole = StreamReader(wire, watch=lambda reading: False)
    whole.feed(stream)
    # The output's characters: what the transcript shows, less how it lays out tool calls and names.
    counted = whole.reading.output_chars
    assert written * 0.7 <= counted <= written and not whole.stopped

    seen: list[int] = []

    def watch(reading: Reading) -> bool:
        seen.append(reading.output_chars)
        return reading.output_chars >= counted // 2

    half = StreamReader(wire, watch=watch)
    half.feed(stream)
    assert half.stopped and counted // 2 <= half.reading.output_chars < counted
    assert half.reading.output_chars == seen[-1]  # nothing after the event that stopped it was read
    assert not half.feed(b"data: more\n\n") and half.finish().error is None and not half.reading.complete


def test_gemini_counts_the_text_and_call_arguments_of_each_chunk() -> None:
    from rules.providers.gemini.usage import output_chars

    chunk = {
        "candidates": [{"content": {"parts": [{"text": "Hello"}, {"functionCall": {"args": {"a": 1}}}]}}]
    }
    assert output_chars(None, json.dumps(chunk)) == len("Hello") + len('{"a": 1}')
    assert output_chars(None, "not json") == 0
