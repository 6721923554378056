"""An LLM exchange as a person reads it: the assistant's turn put back together, the prompt laid out.

`reassemble` takes a response body — an SSE stream cut anywhere, or a whole JSON body — of one wire format
(rules/providers) and returns the assistant's output in order: text, thinking, tool calls (name and JSON
input) and tool results, with the usage and error rules/usage.py reads from the same body. The wire format
says what its output is: `body_parts` reads a whole answer, `stream_parts` builds one from a stream's events
(each provider's module says how, e.g. rules/providers/anthropic/transcript.py); a wire format without them
(a token count) has no output to show.

`outline_request` lays out a request body through the wire format's `outline`: its settings, tools, system
blocks and messages, each with the path (`system[1]`, `messages[3].content[0]`) that rules/json_diff.py uses
for what sluice changed. The helpers below are the pieces the providers' outlines and parts are made of.

Fails open: provider input never raises here; what cannot be read is shown as it came.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rules.usage import Reading, StreamReader, framing, read_response_body

if TYPE_CHECKING:
    from rules.providers import WireFormat

JSONObject = dict[str, Any]


# A block's JSON shown whole up to this many characters; longer ones are cut with a note.
OTHER_BLOCK_LIMIT = 2_000
NESTED_TOO_DEEPLY = "(nested too deeply to show)"


@dataclass(frozen=True, slots=True)
class Part:
    """One piece of the assistant's output.

    `kind` is "text", "thinking", "redacted_thinking", "refusal", "tool_call" (`name`, `call_id`, `text` the
    input as indented JSON), "tool_result" (a server tool's result; `name` its type) or "other" (a block of
    a type its wire format does not lay out, shown as compact JSON). `choice` numbers an answer's
    alternatives when it has several (a request's `n`).
    """

    kind: str
    text: str = ""
    name: str | None = None
    call_id: str | None = None
    choice: int = 0


@dataclass(frozen=True, slots=True)
class Transcript:
    api: str
    streamed: bool
    parts: tuple[Part, ...]
    reading: Reading
    events: int = 0  # SSE events read (0 for a whole body)


@dataclass(frozen=True, slots=True)
class Entry:
    """One element of a request: a tool, a system block, or one content block of a message.

    `path` locates it in the body (`tools[0]`, `system`, `system[2]`, `messages[3].content[1]`,
    `messages[4]`); `kind` is the block type ("text", "tool_use", "tool_result", "image", "function", ...);
    `cache` the TTL of a `cache_control` breakpoint on it ("5m", "1h"), if any.
    """

    path: str
    kind: str
    text: str
    role: str = ""
    name: str | None = None
    cache: str | None = None


@dataclass(frozen=True, slots=True)
class RequestOutline:
    settings: tuple[tuple[str, str], ...] = ()
    tools: tuple[Entry, ...] = ()
    system: tuple[Entry, ...] = ()
    messages: tuple[Entry, ...] = ()


# --- responses -------------------------------------------------------------------------------------------


def is_event_stream(body: bytes, content_type: str | None = None, wire: WireFormat | None = None) -> bool:
    """Whether a body is a stream (of `wire`'s framing; SSE without one): by its content type when known,
    else by how it starts (binary frames: anything but a JSON object)."""
    if content_type:
        wanted = framing(wire.stream_framing).content_type if wire is not None else "text/event-stream"
        return content_type.split(";", 1)[0].strip().lower() == wanted
    if wire is not None and wire.stream_framing != "sse":
        return bool(body) and body.lstrip()[:1] != b"{"
    head = body.lstrip()[:16]
    return head.startswith((b"event:", b"data:", b":", b"id:"))


def reassemble(
    wire: WireFormat, body: bytes, *, status: int = 200, streamed: bool | None = None
) -> Transcript:
    """The assistant's output of one response body (decoded), streamed or whole; `streamed=None` sniffs."""
    if streamed is None:
        streamed = is_event_stream(body, wire=wire)
    if not streamed:
        reading = read_response_body(wire, body, status)
        obj = _json_object(body)
        parts = wire.body_parts(obj) if obj and wire.body_parts is not None else []
        return Transcript(wire.name, False, tuple(parts), reading)
    reader = StreamReader(wire)
    reader.feed(body)
    reading = reader.finish()
    builder = wire.stream_parts() if wire.stream_parts is not None else None
    parser = framing(wire.stream_framing).parser()
    events = parser.feed(body)
    parser.close()
    for event in events:
        payload = _json_object(event.data)
        if payload is not None and builder is not None:
            builder.take(event.event, payload)
    return Transcript(wire.name, True, tuple(builder.parts()) if builder else (), reading, len(events))


# --- requests --------------------------------------------------------------------------------------------


def outline_request(wire: WireFormat, body: Mapping[str, Any]) -> RequestOutline:
    """A request body's settings, tools, system blocks and messages, in prompt order. Never raises.

    A wire format without an outline lays out nothing (the view then shows only what sluice changed)."""
    return wire.outline(body) if wire.outline is not None else RequestOutline()


def settings_of(body: Mapping[str, Any], keys: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The request's settings among `keys` (a wire format's), in that order, each as one short line."""
    return tuple((key, _setting(body[key])) for key in keys if key in body)


def tool_entries(body: Mapping[str, Any]) -> tuple[Entry, ...]:
    """`tools[i]`, each its name and the first line of its description (flat, or under `function`)."""
    return tuple(_tool_entry(index, tool) for index, tool in enumerate(body.get("tools") or []))


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else compact(value, limit=300)


def cache_ttl(block: object) -> str | None:
    """The TTL of a `cache_control` breakpoint on a block ("5m" when it names none), or None."""
    if not isinstance(block, Mapping) or not isinstance(block.get("cache_control"), Mapping):
        return None
    ttl = block["cache_control"].get("ttl")
    return ttl if isinstance(ttl, str) else "5m"


def _tool_entry(index: int, tool: object) -> Entry:
    if not isinstance(tool, Mapping):
        return Entry(f"tools[{index}]", "tool", compact(tool))
    function = as_mapping(tool.get("function")) or tool
    name = as_str(function.get("name")) or as_str(tool.get("type")) or None
    description = as_str(function.get("description")).strip().splitlines()
    return Entry(
        f"tools[{index}]",
        as_str(tool.get("type")) or "tool",
        description[0] if description else "",
        name=name,
        cache=cache_ttl(tool),
    )


def content_text(content: object) -> str:
    """A tool result's or message's content: a string, or the texts of its blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for block in content:
            if isinstance(block, Mapping) and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif isinstance(block, Mapping) and block.get("type") in ("image", "image_url", "input_image"):
                texts.append("[image]")
            else:
                texts.append(compact(block))
        return "\n".join(texts)
    return "" if content is None else compact(content)


# --- helpers ---------------------------------------------------------------------------------------------


def pretty_json(value: Any) -> str:
    """Indented JSON for a tool's input; a string that is not JSON (a cut-off stream) is shown as it is."""
    if isinstance(value, _Unparsed):
        return f"{value.text}\n(incomplete JSON as streamed)"
    try:
        return json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)
    except RecursionError:
        return NESTED_TOO_DEEPLY


@dataclass(frozen=True, slots=True)
class _Unparsed:
    text: str


def arguments_text(raw: object) -> str:
    """A tool call's arguments as indented JSON, sent as a JSON string or as an object."""
    return pretty_json(loads_or_text(raw) if isinstance(raw, str) else raw)


def loads_or_text(text: str) -> Any:
    """Streamed JSON put back together: its value, `{}` when empty, or the text kept as it came (cut off)."""
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _Unparsed(text)


def compact(value: Any, limit: int = OTHER_BLOCK_LIMIT) -> str:
    """One line of JSON for a block this module does not lay out, cut at `limit` characters with a note."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    except RecursionError:
        return NESTED_TOO_DEEPLY
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _json_object(raw: bytes | str) -> JSONObject | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def objects(value: object) -> list[JSONObject]:
    """The objects of a JSON array; anything else in it, or a value that is no array, is passed by."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def as_mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def as_int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def as_str(value: object) -> str:
    return value if isinstance(value, str) else ""


def as_id(value: object) -> str | None:
    """A non-empty string (an id, a name), else None."""
    return value if isinstance(value, str) and value else None


def join_texts(parts: Iterable[Part], kind: str = "text") -> str:
    """All output of one kind, concatenated: the assistant's reply as one string."""
    return "".join(part.text for part in parts if part.kind == kind)
