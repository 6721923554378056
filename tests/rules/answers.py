"""Provider answers for the answer readers' tests: recorded fixtures and event streams built from records
(tests/rules/payloads.py), read through a wire format's stream reader."""

from __future__ import annotations

from rules.providers import wire_format
from rules.usage import Reading, StreamReader
from tests.rules.payloads import FIXTURES, fixture, sse

__all__ = ["FIXTURES", "fixture", "read_stream", "sse"]


def read_stream(api: str, *chunks: bytes) -> tuple[Reading, list[bool]]:
    reader = StreamReader(wire_format(api))
    firsts = [reader.feed(chunk) for chunk in chunks]
    return reader.finish(), firsts
