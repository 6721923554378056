"""sluice's event-stream frame writer (rules/providers/bedrock/eventstream.py), read back by botocore."""

from __future__ import annotations

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from rules.providers.bedrock.eventstream import event_frame, exception_frame, frame


def decode(data: bytes) -> list:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)


def test_frames_written_are_the_frames_botocore_reads():
    data = event_frame("chunk", b'{"bytes":"e30="}') + exception_frame("throttlingException", "slow down é")
    first, second = decode(data)
    assert first.headers == {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert first.payload == b'{"bytes":"e30="}'
    assert second.headers[":exception-type"] == "throttlingException"
    assert second.payload.decode() == '{"message": "slow down é"}'


def test_a_flipped_byte_fails_the_checksum():
    data = bytearray(event_frame("chunk", b"{}"))
    data[-6] ^= 1
    with pytest.raises(ChecksumMismatch):
        decode(bytes(data))


def test_a_header_a_frame_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="too long"):
        frame({"x" * 256: "v"}, b"")
