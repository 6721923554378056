from __future__ import annotations

import random
import re
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.sse import MAX_RECORD_BYTES, SSEEvent, SSEParser

FIXTURES = Path(__file__).parent.parent / "fixtures"
SSE_FIXTURES = sorted(FIXTURES.glob("*.sse"))


def parse(*chunks: bytes) -> tuple[list[SSEEvent], bool]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.close()
    return events, parser.truncated


def reference_parse(stream: bytes) -> tuple[list[SSEEvent], bool]:
    """The WHATWG algorithm written the obvious way, on the whole stream at once: the oracle."""
    text = stream.decode("utf-8", "replace").removeprefix("\ufeff")
    lines = re.split(r"\r\n|\r|\n", text)
    unterminated = lines.pop()
    events: list[SSEEvent] = []
    event, data, pending = "", "", False
    for line in lines:
        if line == "":
            if data:
                events.append(SSEEvent(event or None, data.removesuffix("\n")))
            event, data, pending = "", "", False
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        value = value.removeprefix(" ") if colon else ""
        if name == "data":
            data += value + "\n"
            pending = True
        elif name == "event":
            event = value
            pending = True
    return events, pending or unterminated != ""


CASES = [
    ("one event", b"event: ping\ndata: {}\n\n", [SSEEvent("ping", "{}")]),
    ("no event field", b"data: hello\n\n", [SSEEvent(None, "hello")]),
    ("data lines joined with LF", b"data: a\ndata: b\ndata:\n\n", [SSEEvent(None, "a\nb\n")]),
    ("no space after colon", b"data:x\nevent:e\n\n", [SSEEvent("e", "x")]),
    ("only one leading space stripped", b"data:  two\n\n", [SSEEvent(None, " two")]),
    ("colons in the value", b"data: a: b:c\n\n", [SSEEvent(None, "a: b:c")]),
    ("CRLF", b"event: x\r\ndata: 1\r\n\r\n", [SSEEvent("x", "1")]),
    ("CR", b"event: x\rdata: 1\r\r", [SSEEvent("x", "1")]),
    ("mixed line endings", b"data: 1\r\ndata: 2\rdata: 3\n\r\n", [SSEEvent(None, "1\n2\n3")]),
    ("comments ignored", b": keep-alive\ndata: 1\n: more\n\n:\n\n", [SSEEvent(None, "1")]),
    ("id and retry ignored", b"id: 7\nretry: 100\ndata: 1\n\n", [SSEEvent(None, "1")]),
    ("unknown field ignored", b"foo: bar\ndata: 1\n\n", [SSEEvent(None, "1")]),
    ("field without colon", b"data\ndata\n\n", [SSEEvent(None, "\n")]),
    ("event without data is not dispatched", b"event: ping\n\ndata: 1\n\n", [SSEEvent(None, "1")]),
    (
        "event type resets after dispatch",
        b"event: a\ndata: 1\n\ndata: 2\n\n",
        [SSEEvent("a", "1"), SSEEvent(None, "2")],
    ),
    ("empty event name is absent", b"event:\ndata: 1\n\n", [SSEEvent(None, "1")]),
    ("leading BOM dropped", b"\xef\xbb\xbfdata: 1\n\n", [SSEEvent(None, "1")]),
    ("only the first BOM", b"\xef\xbb\xbf\xef\xbb\xbfdata: 1\n\n", []),
    ("invalid UTF-8 replaced", b"data: \xff\xfe ok\n\n", [SSEEvent(None, "\ufffd\ufffd ok")]),
    ("multi-byte UTF-8", "data: Zürich 🌦️ 天気\n\n".encode(), [SSEEvent(None, "Zürich 🌦️ 天気")]),
    ("blank lines alone", b"\n\n\r\n\r", []),
    ("unterminated record not dispatched", b"data: 1\n\ndata: 2\n", [SSEEvent(None, "1")]),
]


@pytest.mark.parametrize(("stream", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_events(stream: bytes, expected: list[SSEEvent]) -> None:
    assert parse(stream)[0] == expected
    assert parse(*[stream[i : i + 1] for i in range(len(stream))])[0] == expected
    assert reference_parse(stream)[0] == expected


@pytest.mark.parametrize(
    ("stream", "truncated"),
    [
        (b"data: 1\n\n", False),
        (b"", False),
        (b"data: 1\n\n: trailing comment\n", False),
        (b"data: 1\n\ndata: 2", True),  # cut mid-line
        (b"data: 1\n\ndata: 2\n", True),  # cut before the blank line
        (b"data: 1\n\nevent: message_stop\n", True),
        (b"data: 1\r", True),  # a CR alone ends the line; the record still waits for its blank line
    ],
)
def test_close_reports_an_unfinished_record(stream: bytes, truncated: bool) -> None:
    assert parse(stream)[1] is truncated


def test_close_dispatches_nothing() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n") == []
    assert parser.close() == []
    assert parser.truncated


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    # Were the LF taken for a second line end, the blank line would dispatch "a" on its own.
    assert parse(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == ([SSEEvent(None, "a\nb")], False)


def test_bom_split_across_chunks() -> None:
    assert parse(b"\xef", b"\xbb", b"\xbfdata: 1\n\n")[0] == [SSEEvent(None, "1")]
    assert parse(b"\xef", b"\xbbx\n\ndata: 1\n\n")[0] == [SSEEvent(None, "1")]


def test_utf8_character_split_across_chunks() -> None:
    stream = "data: 🌦️\n\n".encode()
    for cut in range(len(stream)):
        assert parse(stream[:cut], stream[cut:])[0] == [SSEEvent(None, "🌦️")]


@pytest.mark.parametrize("fixture", SSE_FIXTURES, ids=lambda p: p.name)
def test_fixture_matches_reference(fixture: Path) -> None:
    stream = fixture.read_bytes()
    events, truncated = parse(stream)
    assert (events, truncated) == reference_parse(stream)
    assert len(events) == stream.count(b"\n\n")
    assert not truncated


@pytest.mark.parametrize("fixture", SSE_FIXTURES, ids=lambda p: p.name)
def test_fixture_split_at_every_byte(fixture: Path) -> None:
    stream = fixture.read_bytes()
    whole = parse(stream)
    for cut in range(len(stream) + 1):
        assert parse(stream[:cut], stream[cut:]) == whole, cut
    assert parse(*[stream[i : i + 1] for i in range(len(stream))]) == whole


@pytest.mark.parametrize("fixture", SSE_FIXTURES, ids=lambda p: p.name)
@pytest.mark.parametrize("newline", [b"\r\n", b"\r"], ids=["CRLF", "CR"])
def test_fixture_with_other_line_endings(fixture: Path, newline: bytes) -> None:
    stream = fixture.read_bytes()
    converted = b"\xef\xbb\xbf" + stream.replace(b"\n", newline)
    rng = random.Random(fixture.name)
    cuts = sorted(rng.sample(range(len(converted)), 40))
    chunks = [converted[a:b] for a, b in zip([0, *cuts], [*cuts, len(converted)], strict=True)]
    assert parse(*chunks) == parse(stream)


@pytest.mark.parametrize("fixture", SSE_FIXTURES, ids=lambda p: p.name)
def test_fixture_cut_short_is_truncated(fixture: Path) -> None:
    stream = fixture.read_bytes()
    events, truncated = parse(stream[:-1])  # the last blank line is missing its LF
    assert truncated
    assert events == parse(stream)[0][:-1]


def test_oversized_record_is_dropped_and_the_stream_goes_on() -> None:
    parser = SSEParser(max_record_bytes=100)
    events = parser.feed(b"data: small\n\nevent: big\ndata: " + b"x" * 60 + b"\n")
    events += parser.feed(b"data: " + b"y" * 60 + b"\ndata: more\n\n")
    events += parser.feed(b"data: after\n\n")
    assert events == [SSEEvent(None, "small"), SSEEvent(None, "after")]
    assert parser.oversized


def test_oversized_line_without_newline_is_dropped_as_it_arrives() -> None:
    parser = SSEParser(max_record_bytes=100)
    events = parser.feed(b"data: ok\n\ndata: ")
    for _ in range(50):
        events += parser.feed(b"z" * 30)
    # The overflowing line ends right at the start of a chunk: that LF ends the line, not the record,
    # so the record's next data line is still dropped.
    events += parser.feed(b"\n")
    events += parser.feed(b"data: rest of the big record\n\ndata: next\n\n")
    assert events == [SSEEvent(None, "ok"), SSEEvent(None, "next")]
    assert parser.oversized


def test_default_cap_is_16_mib_and_memory_stays_bounded() -> None:
    parser = SSEParser()
    block = b"q" * (1024 * 1024)
    tracemalloc.start()
    try:
        parser.feed(b"data: ")
        for _ in range(40):  # a 40 MiB line
            parser.feed(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parser.oversized
    assert peak < MAX_RECORD_BYTES + 4 * len(block)
    assert parser.feed(b"\n\ndata: fine\n\n") == [SSEEvent(None, "fine")]


def test_record_just_under_the_cap_is_kept() -> None:
    payload = b"p" * (MAX_RECORD_BYTES - 16)
    events, _ = parse(b"data: ", payload[: len(payload) // 2], payload[len(payload) // 2 :], b"\n\n")
    assert len(events) == 1
    assert len(events[0].data) == len(payload)


def test_long_stream_keeps_only_the_tail() -> None:
    record = b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"abc"}}\n\n'
    stream = record * 2000
    parser = SSEParser()
    tracemalloc.start()
    try:
        count = 0
        for _ in range(10):  # ~2 MB a round, ~20 MB in all, in 64 KiB chunks cut mid-record
            for i in range(0, len(stream), 65536):
                count += len(parser.feed(stream[i : i + 65536]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20000
    assert peak < 2 * 1024 * 1024


SSE_PIECES = st.sampled_from(
    [
        b"data:",
        b"data: ",
        b"event:",
        b"event: ",
        b"id: 1",
        b"retry: 5",
        b":",
        b" ",
        b"\n",
        b"\r",
        b"\r\n",
        b"x",
        b"{}",
        "é🌦".encode(),
        b"\xff",
        b"\xef\xbb\xbf",
    ]
)


@st.composite
def streams_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    stream = b"".join(draw(st.lists(SSE_PIECES, max_size=60)))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return stream, cuts


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


@settings(max_examples=500, deadline=None)
@given(streams_and_cuts())
def test_chunking_does_not_change_the_events(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    assert parse(*split(stream, cuts)) == parse(stream) == reference_parse(stream)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=8))
def test_never_raises_on_arbitrary_bytes(stream: bytes, cuts: list[int]) -> None:
    cuts = sorted(min(c, len(stream)) for c in cuts)
    assert parse(*split(stream, cuts)) == reference_parse(stream)
