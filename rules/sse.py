"""Incremental `text/event-stream` parser: response body bytes in, events out.

Follows the WHATWG HTML "event stream interpretation"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
UTF-8 with replacement, one leading BOM dropped, lines ended by CRLF, LF or CR, `:` comment lines, one space
after the colon stripped, `data` lines joined with LF, a record dispatched on a blank line only if it has
data, and an unterminated last record never dispatched.

It sits on the streaming hot path, so it works on whole lines (split at newline bytes in C) rather than
byte by byte, and keeps only the unfinished tail of the stream. Fails open: it never raises on any input;
what it cannot use it drops and says so in `truncated` / `oversized`.
"""

from __future__ import annotations

from dataclasses import dataclass

# One record (its data lines plus the line still being received) may not outgrow this; a larger one is
# dropped whole rather than buffered, so a hostile or broken upstream cannot grow the proxy's memory.
MAX_RECORD_BYTES = 16 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str | None  # value of the `event:` field, None if absent or empty
    data: str  # all `data:` lines joined with "\n"


class SSEParser:
    """Incremental text/event-stream parser (WHATWG HTML 'event stream interpretation'): bytes in, events out.

    `feed()` may be given the stream cut at any byte; the events are the same however it is cut.
    `close()` ends the stream: an unterminated trailing record is not dispatched (per the spec) but sets
    `truncated`. A record over `max_record_bytes` is discarded up to its blank line and sets `oversized`.
    """

    __slots__ = (
        "_after_cr",
        "_bom_checked",
        "_data",
        "_data_len",
        "_discarding",
        "_dropping_line",
        "_event",
        "_max",
        "_tail",
        "_tail_len",
        "oversized",
        "truncated",
    )

    def __init__(self, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        self.truncated = False
        self.oversized = False
        self._max = max_record_bytes
        self._bom_checked = False
        # The last line ended in CR: an LF that starts the next chunk belongs to that CRLF, not a new line.
        self._after_cr = False
        # The unfinished last line, as the chunks it came in (joined once its end arrives: no quadratic copy).
        self._tail: list[bytes] = []
        self._tail_len = 0
        # The record being assembled.
        self._event: str | None = None
        self._data: list[str] = []
        self._data_len = 0
        # Dropping an oversized record: until its blank line, and the rest of the line that overflowed.
        self._discarding = False
        self._dropping_line = False

    @property
    def failure(self) -> str | None:
        """Why reading stopped: never for SSE (no checksum to fail; rules/usage.py EventParser)."""
        return None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Every event completed by `chunk`, in order."""
        if not chunk:
            return []
        chunk = bytes(chunk)
        if not self._bom_checked:
            head = b"".join(self._tail) + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._tail, self._tail_len = [head], len(head)  # cannot tell yet whether it is a BOM
                return []
            self._bom_checked = True
            self._tail, self._tail_len = [], 0
            chunk = head[len(_BOM) :] if head.startswith(_BOM) else head
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return []

        has_cr = b"\r" in chunk
        if not has_cr and b"\n" not in chunk:
            self._extend_tail(chunk)
            return []

        buffer = b"".join((*self._tail, chunk)) if self._tail else chunk
        self._tail, self._tail_len = [], 0
        if has_cr:
            self._after_cr = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        rest = lines.pop()
        if self._dropping_line:
            # The first line is the end of the line that overflowed: not a line of its own.
            self._dropping_line = False
            del lines[0]

        events: list[SSEEvent] = []
        for line in lines:
            if line:
                if not self._discarding:
                    self._field(line)
            elif self._discarding:
                self._discarding = False
            else:
                if self._data:
                    events.append(SSEEvent(self._event or None, "\n".join(self._data)))
                self._reset_record()
        if rest:
            self._extend_tail(rest)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream. Nothing is dispatched: a record without its blank line is incomplete."""
        pending = (
            self._tail_len > 0
            or self._dropping_line
            or self._discarding
            or bool(self._data)
            or self._event is not None
        )
        self.truncated = self.truncated or pending
        self._tail, self._tail_len = [], 0
        self._after_cr = self._discarding = self._dropping_line = False
        self._reset_record()
        return []

    def _field(self, line: bytes) -> None:
        if line[0] == 0x3A:  # ":" starts a comment
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data_len += len(value) + 1
            if self._data_len > self._max:
                self._overflow()
                return
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        # `id`, `retry` and unknown fields carry nothing metering needs: ignored.

    def _extend_tail(self, part: bytes) -> None:
        if self._dropping_line:
            return
        self._tail.append(part)
        self._tail_len += len(part)
        if self._data_len + self._tail_len > self._max:
            self._tail, self._tail_len = [], 0
            self._dropping_line = True
            self._overflow()

    def _overflow(self) -> None:
        self.oversized = True
        self._discarding = True
        self._reset_record()

    def _reset_record(self) -> None:
        self._event = None
        self._data = []
        self._data_len = 0
