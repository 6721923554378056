"""AWS event-stream frames as sluice writes them: the one frame sluice itself sends on a Bedrock stream, an
exception that ends it early (a budget cut, the stall watchdog). Reading frames is botocore's
(`botocore.eventstream`, addons/event_frames.py); this only writes.

The format (https://docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html#streaming-event-stream,
and botocore.eventstream which reads it): a 12-byte prelude (total length, headers length, both big-endian
uint32, then the CRC-32 of those 8 bytes), the headers (name length byte, name, type byte 7 = string,
uint16 value length, value), the payload, and the CRC-32 of everything before it. Pure: stdlib only.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping

_STRING = 7  # header value type: UTF-8 string


def frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One frame with string-valued headers; raises ValueError for a header a frame cannot hold."""
    encoded = bytearray()
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        if not 0 < len(raw_name) < 256 or len(raw_value) >= 1 << 15:
            raise ValueError(f"event-stream header {name!r} too long")
        encoded += struct.pack("!B", len(raw_name)) + raw_name + struct.pack("!BH", _STRING, len(raw_value))
        encoded += raw_value
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", zlib.crc32(prelude))
    message = prelude + bytes(encoded) + payload
    return message + struct.pack("!I", zlib.crc32(message))


def exception_frame(exception_type: str, message: str) -> bytes:
    """An exception frame (`:message-type: exception`), as Bedrock ends a stream that failed."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return frame(headers, json.dumps({"message": message}, ensure_ascii=False).encode())


def event_frame(event_type: str, payload: bytes) -> bytes:
    """An event frame (`:message-type: event`) of JSON `payload`."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, payload)
