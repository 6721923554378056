"""What a person sees in mitmweb and saved flows: a one-line summary comment on each metered flow."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mitmproxy import http


def _tokens(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def summarize(row: Mapping[str, Any]) -> str:
    """`model · in 1234 (cache r 800 w 200) · out 56 · $0.0123`, with the error when there was one."""
    parts = [str(row.get("model") or row.get("api") or "?")]
    if row.get("api") == "count_tokens":
        parts.append(f"counted {_tokens(row.get('counted_tokens'))}")
    else:
        cache = ""
        read = row.get("cache_read_tokens") or 0
        write = (row.get("cache_write_5m_tokens") or 0) + (row.get("cache_write_1h_tokens") or 0)
        if read or write:
            cache = f" (cache r {_tokens(read)} w {_tokens(write)})"
        parts.append(f"in {_tokens(row.get('input_tokens'))}{cache}")
        parts.append(f"out {_tokens(row.get('output_tokens'))}")
        cost = row.get("cost_usd")
        parts.append(f"${cost:.4f}" if cost is not None else "$?")
    if row.get("error"):
        parts.append(f"error: {row['error']}")
    return " · ".join(parts)


def annotate(flow: http.HTTPFlow, row: Mapping[str, Any]) -> None:
    flow.comment = summarize(row)
