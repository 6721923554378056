"""What a person sees in mitmweb and saved flows: a one-line summary comment on each metered flow, and a
mark on the calls that need a look.

Flags, most pressing first; the first one picks the mark (the emoji in the flow list), every one is written
as a `#tag` at the start of the comment:

- `#budget` (💸 `:money_with_wings:`): sluice refused the call, the client's budget is spent;
- `#rate-limited` (⌛ `:hourglass:`): the provider answered 429 or 529, or a stream ended in a rate-limit or
  overloaded error;
- `#error` (❌ `:x:`): any other failure: HTTP status ≥ 400, an error event, a cut stream, a lost connection;
- `#cache-miss` (💔 `:broken_heart:`): a call that continues a conversation read nothing from the prompt
  cache (addons/cache_health.py).

Filter them in mitmweb or mitmdump with `~marked`, `~marker hourglass`, or `~comment "#cache-miss"`.
`--set sluice_marks=symbols` marks with characters text fonts have instead of emoji (SYMBOL_MARKS), and
`sluice_marks=off` marks nothing; the `#tags` are written either way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mitmproxy import http

from rules.call_outcome import is_error
from rules.providers import find_wire_format


def _tokens(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def summarize(row: Mapping[str, Any]) -> str:
    """`$0.0123 · in 1234 (cache r 800 w 200) · out 56 · model`, with the error when there was one.

    Cost and tokens come first: mitmweb's Comment column is narrow at common window widths, and the model
    name is the part a person can best do without (it is in the request). A call that succeeded without a
    price says `unpriced`; a failed call shows no cost at all.
    """
    parts = []
    model = str(row.get("model") or row.get("api") or "?")
    wire = find_wire_format(str(row.get("api")))
    if wire is not None and not wire.billed:
        parts.append(f"counted {_tokens(row.get('counted_tokens'))}")
    else:
        cost = row.get("cost_usd")
        if cost is not None:
            parts.append(f"${cost:.4f}")
        elif not is_error(row):
            parts.append("unpriced")
        cache = ""
        read = row.get("cache_read_tokens") or 0
        write = (row.get("cache_write_5m_tokens") or 0) + (row.get("cache_write_1h_tokens") or 0)
        if read or write:
            cache = f" (cache r {_tokens(read)} w {_tokens(write)})"
        parts.append(f"in {_tokens(row.get('input_tokens'))}{cache}")
        parts.append(f"out {_tokens(row.get('output_tokens'))}")
    parts.append(model)
    if row.get("error"):
        parts.append(f"error: {row['error']}")
    return " · ".join(parts)


# Flag → mark, in order of precedence.
MARKS = {
    "budget": ":money_with_wings:",
    "rate-limited": ":hourglass:",
    "error": ":x:",
    "cache-miss": ":broken_heart:",
}
# The same flags as characters ordinary text fonts have (DejaVu, Liberation, the system UI fonts), for a
# mitmweb on a machine with no colour-emoji font, where the emoji above show as empty boxes:
# `--set sluice_marks=symbols`. mitmweb shows only its known shortcodes, so these are shortcodes too.
SYMBOL_MARKS = {
    "budget": ":heavy_multiplication_x:",  # ✖
    "rate-limited": ":hourglass:",  # ⌛ (text fonts have this one)
    "error": ":warning:",  # ⚠
    "cache-miss": ":recycle:",  # ♻
}
# `sluice_marks`: which marks flagged calls get; "off" leaves marking to the user (the #tags stay).
MARK_SETS: dict[str, dict[str, str]] = {"emoji": MARKS, "symbols": SYMBOL_MARKS, "off": {}}
# sluice's own refusals (addons/budget.py), as its notes start in the row's `rules_applied`: a budget's
# (the client's or its team's) and a rate limit's or window share's. The note says which limit, its value and
# when it resets; the comment shows it.
BUDGET_REFUSALS = (
    "note:refused: budget exhausted",
    "note:refused: team budget exhausted",
    "note:budget reached mid-stream",
)
_REFUSAL = re.compile(
    r'"note:((?:refused: (?:budget|team budget|rate limit|window share)|budget reached mid-stream)[^"]*)"'
)
RATE_LIMIT_STATUSES = (429, 529)
RATE_LIMIT_ERRORS = ("rate_limit_error", "overloaded_error", "rate_limit_exceeded")


def flags(row: Mapping[str, Any]) -> list[str]:
    """The flags of one call's row, most pressing first (see MARKS)."""
    found = []
    status = row.get("status")
    error = str(row.get("error") or "")
    failed = is_error(row)
    applied = str(row.get("rules_applied") or "")
    if any(refusal in applied for refusal in BUDGET_REFUSALS):
        found.append("budget")
    elif status in RATE_LIMIT_STATUSES or error.startswith(RATE_LIMIT_ERRORS):
        found.append("rate-limited")
    elif failed:
        found.append("error")
    if row.get("cache_status") == "miss":
        found.append("cache-miss")
    return found


def annotate(flow: http.HTTPFlow, row: Mapping[str, Any], marks: Mapping[str, str] = MARKS) -> None:
    """Comment every metered flow; mark a flagged one with `marks` (unless someone marked it already)."""
    tags = flags(row)
    summary = summarize(row)
    if refusal := _REFUSAL.search(str(row.get("rules_applied") or "")):
        summary += f" · {refusal[1]}"
    if row.get("cache_status") == "miss" and row.get("cache_note"):
        summary += f" · cache miss: {row['cache_note']}"
    flow.comment = " ".join([*(f"#{tag}" for tag in tags), summary])
    if tags and not flow.marked and tags[0] in marks:
        flow.marked = marks[tags[0]]
