"""AWS event-stream frames (`application/vnd.amazon.eventstream`, Bedrock's streamed answers) read as they
pass, by botocore's decoder (`botocore.eventstream.EventStreamBuffer`: the prelude and message CRC-32s are
checked, header and payload lengths bounded). Registered as the "eventstream" framing of rules/usage.py, so
the meter and the LLM view read such streams like SSE ones: each frame becomes one event, named by its
`:event-type` (an exception frame by its `:exception-type`, an error frame by its `:error-code`), its
payload the event's data.

Fails open for the client: a frame that fails its checks stops the reading (the row says why) and the bytes
still pass untouched. Bounded: botocore holds at most one frame (its payload limit is 24 MiB).
"""

from __future__ import annotations

import json
import struct

from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from rules.sse import SSEEvent
from rules.usage import Framing, register_framing

CONTENT_TYPE = "application/vnd.amazon.eventstream"


class EventFrameParser:
    """Frames in (cut anywhere), events out; stops at the first frame that fails its checks."""

    __slots__ = ("_buffer", "_error", "_pending", "oversized", "truncated")

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()
        self._error: str | None = None
        self._pending = 0  # bytes fed that no whole frame has used yet
        self.oversized = False  # botocore refuses an oversized frame: that is an `error` here
        self.truncated = False

    @property
    def failure(self) -> str | None:
        return self._error

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._error is not None or not chunk:
            return []
        self._buffer.add_data(bytes(chunk))
        self._pending += len(chunk)
        events: list[SSEEvent] = []
        try:
            for message in self._buffer:
                self._pending -= message.prelude.total_length
                events.append(_event(message))
        except (ParserError, ValueError, struct.error) as e:
            self._error = f"event-stream frame unreadable ({type(e).__name__}): {e}"
            self._buffer = EventStreamBuffer()  # the rest is not read: let go of what it held
        return events

    def close(self) -> None:
        """End of body: bytes of an unfinished frame left over mean the stream was cut mid-frame."""
        self.truncated = self._pending > 0 and self._error is None


def _event(message: EventStreamMessage) -> SSEEvent:
    headers = message.headers
    kind = headers.get(":message-type", "event")
    if kind == "error":  # a service error outside the modelled exceptions: code and message in headers
        data = json.dumps({"message": str(headers.get(":error-message", ""))})
        return SSEEvent(str(headers.get(":error-code") or "error"), data)
    name = headers.get(":exception-type" if kind == "exception" else ":event-type")
    return SSEEvent(str(name) if name else None, message.payload.decode("utf-8", "replace"))


register_framing(Framing("eventstream", CONTENT_TYPE, EventFrameParser))
