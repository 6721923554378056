"""The "LLM" contentview: an LLM call in mitmweb (and mitmproxy's console) as a person reads it.

A response — streamed or whole, of any wire format (rules/providers) — is shown as the assistant's turn put
back together (rules/transcript.py): text, thinking, tool calls with their JSON input, server tool results;
above it the model, stop reason, usage and cost, the rate-limit state the response carried, the
prompt-cache verdict and any error.

A request is shown as its settings, tools, system blocks and messages, in prompt order, with cache
breakpoints tagged, and with what sluice changed in it marked in the left margin (`+` added by sluice, `~`
changed inside) and listed at the top, from the difference addons/changes.py keeps on the flow.

It is picked automatically for the four metered endpoints (`render_priority` above the JSON view); choose
"JSON" or "Raw" in the view menu to see the bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from mitmproxy import contentviews, http
from mitmproxy.contentviews import Contentview, Metadata

from addons import event_frames  # noqa: F401 - registers the event-stream framing the views read
from addons.calls import price_usage
from addons.changes import METADATA_KEY
from addons.decoding import bound_mitmproxy_decoding
from rules.json_diff import Change, path_is_within
from rules.providers import Endpoint, classify, host_region, wire_format
from rules.transcript import Entry, Part, is_event_stream, outline_request, reassemble
from state.ratelimits import statusline, summarize

RULE = "━━"
FACT_WIDTH = 6  # "limits": the facts of a response line up the same way whichever are present
TEXT_INDENT = "      "
_CACHE_WORDS = {
    "hit": "hit: read from the prompt cache",
    "write": "written: nothing cached to read yet",
    "none": "not used",
}
# Above the JSON view (1) for the metered endpoints, so it is what mitmweb shows first.
PRIORITY = 2.0


class LLMContentview(Contentview):
    name = "LLM"
    syntax_highlight = "none"

    def render_priority(self, data: bytes, metadata: Metadata) -> float:
        endpoint = _endpoint(metadata) if data else None
        if endpoint is None:
            return -1
        if is_event_stream(data, metadata.content_type, wire_format(endpoint.api)):
            return PRIORITY
        head = data.lstrip()[:1]
        return PRIORITY if head in (b"{", b"e", b"d", b":", b"i") else -1

    def prettify(self, data: bytes, metadata: Metadata) -> str:
        endpoint = _endpoint(metadata)
        if endpoint is None:
            raise ValueError("not a metered LLM call")
        flow = metadata.flow
        sluice = flow.metadata.get(METADATA_KEY) if flow is not None else None
        notes = sluice if isinstance(sluice, Mapping) else {}
        region = host_region(flow.request.pretty_host) if isinstance(flow, http.HTTPFlow) else None
        if isinstance(metadata.http_message, http.Request):
            return render_request(endpoint, data, notes, region)
        response = metadata.http_message if isinstance(metadata.http_message, http.Response) else None
        return render_response(endpoint, data, response, notes, metadata.content_type, region)


def register() -> LLMContentview:
    bound_mitmproxy_decoding()  # the views decode bodies through mitmproxy's Message.content
    view = LLMContentview()
    contentviews.add(view)
    return view


def _endpoint(metadata: Metadata) -> Endpoint | None:
    flow = metadata.flow
    if not isinstance(flow, http.HTTPFlow):
        return None
    return classify(flow.request.method, flow.request.path)


# --- responses -------------------------------------------------------------------------------------------


def render_response(
    endpoint: Endpoint,
    data: bytes,
    response: http.Response | None,
    notes: Mapping[str, Any],
    content_type: str | None = None,
    region: str | None = None,
) -> str:
    status = response.status_code if response is not None else 200
    wire = wire_format(endpoint.api)
    streamed = is_event_stream(data, content_type, wire)
    if not streamed and not data.lstrip().startswith(b"{"):
        raise ValueError("neither an event stream nor a JSON object")
    transcript = reassemble(wire, data, status=status, streamed=streamed)  # never raises on data
    reading = transcript.reading
    how = f"streamed ({transcript.events} events)" if streamed else "whole body"
    lines = [f"LLM response · {_served_by(endpoint, notes, region)} · HTTP {status} · {how}", ""]
    facts: list[tuple[str, str]] = []
    if reading.model:
        facts.append(("model", reading.model))
    if reading.response_id:
        facts.append(("id", reading.response_id))
    if reading.stop_reason:
        facts.append(("stop", reading.stop_reason))
    if reading.counted_tokens is not None:
        facts.append(("counted", f"{reading.counted_tokens:,} input tokens (not billed)"))
    elif reading.usage_seen:
        facts.append(("usage", _usage_text(endpoint, reading, notes)))
    if response is not None and (limits := _rate_limit_text(response)):
        facts.append(("limits", limits))
    facts += _cache_facts(notes)
    if reading.error:
        facts.append(("error", reading.error))
    lines += _facts(facts)
    for part in transcript.parts:
        lines += ["", _part_title(part, transcript.parts), *_indented(part.text)]
    if not transcript.parts and reading.counted_tokens is None:
        lines += ["", "(no assistant output)"]
    return "\n".join(lines) + "\n"


def _served_by(endpoint: Endpoint, notes: Mapping[str, Any], region: str | None = None) -> str:
    """Who served the call and its API, as its row says (`provider`; the wire format's provider for a flow
    saved without it), and the cloud region it went to (the row's, else the one its host names)."""
    provider, noted = notes.get("provider"), notes.get("region")
    name = provider if isinstance(provider, str) and provider else endpoint.provider
    region = noted if isinstance(noted, str) and noted else region
    return f"{name} {endpoint.api}" + (f" · region {region}" if region else "")


def _usage_text(endpoint: Endpoint, reading: Any, notes: Mapping[str, Any]) -> str:
    usage = reading.usage
    text = f"in {_n(usage.input_tokens)}"
    if usage.cache_read_tokens:
        text += f" · cache read {_n(usage.cache_read_tokens)}"
    writes = (usage.cache_write_5m_tokens or 0) + (usage.cache_write_1h_tokens or 0)
    if writes:
        text += f" · cache write {_n(writes)}"
        if usage.cache_write_1h_tokens:
            text += f" (5m {_n(usage.cache_write_5m_tokens)}, 1h {_n(usage.cache_write_1h_tokens)})"
    text += f" · out {_n(usage.output_tokens)}"
    if usage.reasoning_tokens:
        text += f" (reasoning {_n(usage.reasoning_tokens)})"
    if usage.web_search_requests:
        text += f" · {usage.web_search_requests} web searches"
    # Priced as the row is: by who bills the call (None: the model's name decides); a flow saved without it
    # by its wire format's provider.
    billed_by = notes.get("billed_by", endpoint.provider)
    priced = price_usage(billed_by if isinstance(billed_by, str) else None, reading.model, usage)
    if priced.cost_usd is None:
        return f"{text} · cost unknown ({priced.note})"
    return f"{text} · ${priced.cost_usd:.4f}"


def _rate_limit_text(response: http.Response) -> str | None:
    headers = {
        name.lower(): value
        for name, value in response.headers.items()
        if "ratelimit" in name.lower() or name.lower() in ("retry-after", "retry-after-ms")
    }
    if not headers:
        return None
    observed = datetime.fromtimestamp(response.timestamp_end or response.timestamp_start or 0, UTC)
    summary = summarize(headers, observed)
    return f"{statusline(summary, observed)} (as of {observed:%H:%M:%S} UTC)"


def _part_title(part: Part, parts: Sequence[Part]) -> str:
    choice = f"choice {part.choice} · " if any(p.choice for p in parts) else ""
    if part.kind == "tool_call":
        call_id = f" ({part.call_id})" if part.call_id else ""
        return f"{RULE} {choice}tool call: {part.name or '?'}{call_id} {RULE}"
    if part.kind == "tool_result":
        return f"{RULE} {choice}tool result: {part.name or '?'} {RULE}"
    if part.kind == "other":
        return f"{RULE} {choice}{part.name or 'block'} {RULE}"
    return f"{RULE} {choice}{part.kind.replace('_', ' ')} {RULE}"


# --- requests --------------------------------------------------------------------------------------------


def render_request(
    endpoint: Endpoint, data: bytes, notes: Mapping[str, Any], region: str | None = None
) -> str:
    try:
        body = json.loads(data)
    except RecursionError:
        raise ValueError("request body nests too deeply to show") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"request body is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise ValueError("request body is not a JSON object")
    outline = outline_request(wire_format(endpoint.api), body)
    changes = [c for c in map(Change.from_dict, _list(notes.get("changes"))) if c is not None]
    rules = [str(rule) for rule in _list(notes.get("rules"))]
    lines = [f"LLM request · {_served_by(endpoint, notes, region)}", ""]
    if changes or rules:
        lines.append(f"sluice changed this request: {', '.join(rules) or 'see below'}")
        lines += [f"  {_change_line(change)}" for change in changes]
        lines.append("")
    else:
        lines += ["sluice changed nothing in this request.", ""]
    facts = [*outline.settings, *_cache_facts(notes)]
    margins = [_margin(key, changes) if key != "cache" else "  " for key, _ in facts]
    lines += [margin + line for margin, line in zip(margins, _facts(facts), strict=True)]
    lines += _section("tools", outline.tools, changes)
    lines += _section("system", outline.system, changes)
    lines += _section("messages", outline.messages, changes)
    return "\n".join(lines) + "\n"


def _change_line(change: Change) -> str:
    if change.op == "added":
        return f"+ {change.path}: {change.after}"
    if change.op == "removed":
        return f"- {change.path}: {change.before}"
    return f"~ {change.path}: {change.before} → {change.after}"


def _margin(path: str, changes: Iterable[Change]) -> str:
    """`+ ` when sluice added this element, `~ ` when it changed something inside it, else blank."""
    mark = "  "
    for change in changes:
        if change.op == "added" and path_is_within(path, change.path):
            return "+ "
        if path_is_within(change.path, path):
            mark = "~ "
    return mark


def _section(title: str, entries: Sequence[Entry], changes: Sequence[Change]) -> list[str]:
    if not entries:
        return []
    lines = ["", f"{RULE} {title} ({len(entries)}) {RULE}"]
    for entry in entries:
        margin = _margin(entry.path, changes)
        head = f"{margin}{entry.path}"
        if entry.role and title == "messages":
            head += f" · {entry.role}"
        head += f" · {entry.kind}"
        if entry.name:
            head += f" {entry.name}"
        if entry.cache:
            head += f" · [cache {entry.cache}]"
        if margin == "+ ":
            head += "  ◀ added by sluice"
        elif margin == "~ ":
            head += "  ◀ changed by sluice"
        lines.append(head)
        if title == "tools":
            if entry.text:
                lines.append(f"{TEXT_INDENT}{entry.text}")
        else:
            lines += _indented(entry.text)
    return lines


# --- shared ----------------------------------------------------------------------------------------------


def _cache_facts(notes: Mapping[str, Any]) -> list[tuple[str, str]]:
    cache = notes.get("cache")
    if not isinstance(cache, Mapping) or not isinstance(cache.get("status"), str):
        return []
    status, note = cache["status"], cache.get("note")
    if isinstance(note, str) and note:
        return [("cache", f"{status}: {note}")]
    return [("cache", _CACHE_WORDS.get(status, status))]


def _facts(facts: Sequence[tuple[str, str]]) -> list[str]:
    width = max((len(name) for name, _ in facts), default=0)
    width = max(width, FACT_WIDTH)
    return [f"{name.ljust(width)}  {value}" for name, value in facts]


def _indented(text: str) -> list[str]:
    return [f"{TEXT_INDENT}{line}" for line in (text.splitlines() or [""])]


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _n(count: int | None) -> str:
    return "?" if count is None else f"{count:,}"
