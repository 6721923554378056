"""Drop whole SSE records from a stream on their way to the client, passing everything else as it comes.

Used for one thing: OpenAI chat streams where sluice turned on `stream_options.include_usage` for a client
that did not ask. The extra last chunk (`choices: []` plus `usage`) must not reach that client — some
clients index `choices[0]` unguarded. Complete records go out the moment their blank line arrives; only the
unfinished tail of a record waits for the rest of it (a client cannot use half a record anyway).
Fails open: bytes that never complete a record are released at the end of the stream unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# WHATWG HTML "event stream interpretation": a record ends at a blank line; lines end in CRLF, LF or CR.
_RECORD_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_DATA = re.compile(rb"^data: ?(.*)$", re.MULTILINE)


class SSERecordFilter:
    def __init__(self, drop: Callable[[str], bool]) -> None:
        """`drop(data)` decides on the joined `data:` text of a record."""
        self._drop = drop
        self._tail = b""
        self.dropped = 0

    def feed(self, chunk: bytes) -> bytes:
        buffer = self._tail + chunk if self._tail else chunk
        out: list[bytes] = []
        start = 0
        for match in _RECORD_END.finditer(buffer):
            # A lone CR at the very end may be the first half of a CRLF: leave it for the next chunk.
            if match.end() == len(buffer) and buffer.endswith(b"\r"):
                break
            record = buffer[start : match.end()]
            if self._wants(record):
                out.append(record)
            start = match.end()
        self._tail = buffer[start:]
        return b"".join(out)

    def close(self) -> bytes:
        tail, self._tail = self._tail, b""
        return tail

    def _wants(self, record: bytes) -> bool:
        data = b"\n".join(m.group(1).rstrip(b"\r") for m in _DATA.finditer(record))
        if not data:
            return True
        if self._drop(data.decode("utf-8", "replace")):
            self.dropped += 1
            return False
        return True
