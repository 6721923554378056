"""Provider answers for the answer readers' tests: recorded fixtures and event streams built from records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rules.providers import wire_format
from rules.usage import Reading, StreamReader

FIXTURES = Path(__file__).parent.parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def read_stream(api: str, *chunks: bytes) -> tuple[Reading, list[bool]]:
    reader = StreamReader(wire_format(api))
    firsts = [reader.feed(chunk) for chunk in chunks]
    return reader.finish(), firsts


def sse(*records: tuple[str | None, Any]) -> bytes:
    """An event stream from (event name, JSON payload or raw string) pairs."""
    out = []
    for name, payload in records:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        out.append((f"event: {name}\n" if name else "") + f"data: {data}\n\n")
    return "".join(out).encode()
