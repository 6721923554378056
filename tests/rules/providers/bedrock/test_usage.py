"""Bedrock answers read into sluice's columns (rules/providers/bedrock/invoke.py, converse.py), whole and
streamed, through the generic reader (rules/usage.py) with the event-stream framing
(addons/event_frames.py)."""

from __future__ import annotations

import base64
import json

import pytest

import addons.event_frames  # noqa: F401 - registers the event-stream framing
from rules.providers import wire_format
from rules.providers.bedrock.eventstream import event_frame, exception_frame
from rules.transcript import reassemble
from rules.usage import StreamReader, read_response_body

INVOKE = wire_format("bedrock_invoke")
CONVERSE = wire_format("bedrock_converse")
ANTHROPIC_USAGE = {
    "input_tokens": 37,
    "cache_creation_input_tokens": 512,
    "cache_read_input_tokens": 1536,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 512},
    "output_tokens": 1,
}


def chunk(event: dict) -> bytes:
    raw = base64.b64encode(json.dumps(event).encode()).decode()
    return event_frame("chunk", json.dumps({"bytes": raw, "p": "abcdef"}).encode())


def invoke_stream() -> bytes:
    start = {
        "type": "message_start",
        "message": {"id": "msg_1", "model": "claude-sonnet-4-5-20250929", "usage": ANTHROPIC_USAGE},
    }
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 23}}
    stop = {
        "type": "message_stop",
        "amazon-bedrock-invocationMetrics": {"inputTokenCount": 37, "outputTokenCount": 23},
    }
    return b"".join(chunk(e) for e in (start, block, delta, delta, end, stop))


def converse_stream() -> bytes:
    frames = [
        event_frame("messageStart", b'{"role":"assistant","p":"ab"}'),
        event_frame("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"Hel"}}'),
        event_frame("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"lo"}}'),
        event_frame("contentBlockStop", b'{"contentBlockIndex":0}'),
        event_frame("messageStop", b'{"stopReason":"end_turn"}'),
        event_frame(
            "metadata",
            b'{"usage":{"inputTokens":37,"outputTokens":23,"totalTokens":2108,"cacheReadInputTokens":1536,'
            b'"cacheWriteInputTokens":512},"metrics":{"latencyMs":300}}',
        ),
    ]
    return b"".join(frames)


def read_in_pieces(wire, data: bytes, size: int):
    reader = StreamReader(wire)
    firsts = [reader.feed(data[i : i + size]) for i in range(0, len(data), size)]
    return reader.finish(), firsts


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_an_invoke_stream_cut_anywhere_reads_the_same(size: int):
    reading, firsts = read_in_pieces(INVOKE, invoke_stream(), size)
    assert reading.complete and reading.error is None
    usage = reading.usage
    assert (
        usage.input_tokens,
        usage.cache_read_tokens,
        usage.cache_write_1h_tokens,
        usage.output_tokens,
    ) == (37, 1536, 512, 23)
    assert reading.stop_reason == "end_turn" and reading.response_id == "msg_1"
    assert firsts.count(True) == 1


@pytest.mark.parametrize("size", [1, 13, 10_000])
def test_a_converse_stream_is_read_from_its_metadata_event(size: int):
    reading, firsts = read_in_pieces(CONVERSE, converse_stream(), size)
    assert reading.complete and reading.error is None and reading.stop_reason == "end_turn"
    usage = reading.usage
    counts = (
        usage.input_tokens,
        usage.cache_read_tokens,
        usage.cache_write_5m_tokens,
        usage.cache_write_1h_tokens,
        usage.output_tokens,
    )
    assert counts == (37, 1536, 512, None, 23)
    assert firsts.count(True) == 1


def test_a_stream_cut_before_its_end_says_so():
    data = converse_stream()
    reading, _ = read_in_pieces(CONVERSE, data[: len(data) - 10], 50)
    assert not reading.complete and reading.error == "stream ended before metadata"


def test_an_exception_frame_is_the_error():
    data = converse_stream().split(b"contentBlockStop")[0][:0] + event_frame("messageStart", b"{}")
    data += exception_frame("throttlingException", "Too many tokens, please wait before trying again.")
    reading, _ = read_in_pieces(CONVERSE, data, 9)
    assert reading.error == "throttlingException: Too many tokens, please wait before trying again."
    reading, _ = read_in_pieces(
        INVOKE, chunk({"type": "ping"}) + exception_frame("modelStreamErrorException", "boom"), 9
    )
    assert reading.error == "modelStreamErrorException: boom"


def test_a_frame_that_fails_its_checksum_stops_the_reading_and_says_why():
    data = bytearray(converse_stream())
    data[40] ^= 0xFF  # inside the first frame's headers
    reading, _ = read_in_pieces(CONVERSE, bytes(data), 16)
    assert reading.error is not None and reading.error.startswith(
        "event-stream frame unreadable (ChecksumMismatch)"
    )
    assert not reading.complete


def test_bytes_that_are_no_frames_at_all_never_raise():
    reading, _ = read_in_pieces(CONVERSE, b"\xff" * 40 + b"data: {}\n\n", 5)
    assert reading.error is not None and "unreadable" in reading.error


def test_a_whole_converse_answer_is_read():
    answer = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello"}]}},
        "stopReason": "max_tokens",
        "usage": {
            "inputTokens": 5,
            "outputTokens": 7,
            "cacheReadInputTokens": 0,
            "cacheWriteInputTokens": 100,
            "cacheDetails": [{"ttl": "5m", "inputTokens": 40}, {"ttl": "1h", "inputTokens": 60}],
        },
    }
    reading = read_response_body(CONVERSE, json.dumps(answer).encode(), 200)
    assert reading.stop_reason == "max_tokens"
    assert (reading.usage.cache_write_5m_tokens, reading.usage.cache_write_1h_tokens) == (40, 60)


def test_an_absurd_count_is_suspect_not_priced():
    answer = {"usage": {"inputTokens": -1, "outputTokens": 7}}
    reading = read_response_body(CONVERSE, json.dumps(answer).encode(), 200)
    assert reading.usage.input_tokens is None and reading.usage.suspect == "inputTokens=-1"


def test_bedrocks_error_envelope_is_the_error():
    reading = read_response_body(
        CONVERSE, b'{"message":"Too many requests, please wait before trying again."}', 429
    )
    assert reading.error == "Too many requests, please wait before trying again."
    own = read_response_body(
        CONVERSE, b'{"message":"no client key","__type":"UnrecognizedClientException"}', 401
    )
    assert own.error == "UnrecognizedClientException: no client key"
    # A success that happens to have a `message` field is no error.
    assert read_response_body(CONVERSE, b'{"message":"hi","usage":{}}', 200).error is None


def test_the_transcript_of_both_streams():
    invoke = reassemble(INVOKE, invoke_stream(), streamed=True)
    assert [p.text for p in invoke.parts] == ["HelloHello"] and invoke.events == 6
    converse = reassemble(CONVERSE, converse_stream())  # sniffed: frames, not a JSON object
    assert converse.streamed and [(p.kind, p.text) for p in converse.parts] == [("text", "Hello")]
