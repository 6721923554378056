"""Provider payloads for the rules' tests: captured ones (tests/fixtures), streams built from records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent.parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sse(*records: tuple[str | None, Any]) -> bytes:
    """An event stream from (event name, JSON payload or raw string) pairs."""
    out = []
    for name, payload in records:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        out.append((f"event: {name}\n" if name else "") + f"data: {data}\n\n")
    return "".join(out).encode()
