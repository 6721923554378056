"""The event-stream framing (addons/event_frames.py): frames cut anywhere become events, an exception or
error frame an event named by its type, a frame that fails its checksum stops the reading, a frame cut
short is noticed."""

from __future__ import annotations

import json
import struct
import zlib

from addons.event_frames import CONTENT_TYPE, EventFrameParser
from rules.providers import wire_format
from rules.providers.bedrock.eventstream import event_frame, exception_frame, frame
from rules.usage import framing, is_stream_type

FRAMES = event_frame("messageStart", b'{"role":"assistant"}') + exception_frame("throttlingException", "slow")


def test_frames_fed_a_byte_at_a_time_become_the_same_events():
    whole = EventFrameParser().feed(FRAMES)
    parser = EventFrameParser()
    pieces = [event for i in range(len(FRAMES)) for event in parser.feed(FRAMES[i : i + 1])]
    assert pieces == whole
    assert [(e.event, json.loads(e.data)) for e in whole] == [
        ("messageStart", {"role": "assistant"}),
        ("throttlingException", {"message": "slow"}),
    ]
    parser.close()
    assert parser.failure is None and not parser.truncated


def test_an_error_frame_is_named_by_its_code():
    data = frame({":message-type": "error", ":error-code": "InternalFailure", ":error-message": "oops"}, b"")
    [event] = EventFrameParser().feed(data)
    assert (event.event, json.loads(event.data)) == ("InternalFailure", {"message": "oops"})


def test_a_bad_frame_stops_the_reading_and_nothing_after_it_is_read():
    broken = bytearray(FRAMES)
    broken[20] ^= 0x01
    parser = EventFrameParser()
    assert parser.feed(bytes(broken)) == []
    assert parser.failure is not None and "ChecksumMismatch" in parser.failure
    assert parser.feed(event_frame("metadata", b"{}")) == []


def test_a_frame_longer_than_botocore_holds_is_refused_not_buffered():
    # A prelude claiming a 100 MB frame: refused at once, not waited for.
    head = frame({":event-type": "x"}, b"")
    parser = EventFrameParser()
    prelude = struct.pack("!II", 100_000_000, 0)
    parser.feed(prelude + struct.pack("!I", zlib.crc32(prelude)) + head[12:])
    assert parser.failure is not None and "InvalidPayloadLength" in parser.failure


def test_a_stream_cut_mid_frame_is_truncated():
    parser = EventFrameParser()
    assert len(parser.feed(FRAMES[:-3])) == 1
    parser.close()
    assert parser.truncated


def test_the_framing_is_registered_with_its_content_type():
    assert framing("eventstream").content_type == CONTENT_TYPE
    assert is_stream_type(wire_format("bedrock_converse"), "application/vnd.amazon.eventstream")
    assert not is_stream_type(wire_format("bedrock_converse"), "text/event-stream")
    assert is_stream_type(wire_format("messages"), "text/event-stream; charset=utf-8")
