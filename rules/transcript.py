"""An LLM exchange as a person reads it: the assistant's turn put back together, the prompt laid out.

`reassemble` takes a response body — an SSE stream cut anywhere, or a whole JSON body — of one of the
metered APIs ("messages", "chat", "responses", "count_tokens"; see rules/usage.py) and returns the assistant's
output in order: text, thinking, tool calls (name and JSON input) and tool results, with the usage and error
rules/usage.py reads from the same body.

- Anthropic Messages stream: `content_block_start` opens block `index`; `text_delta`, `thinking_delta` and
  `input_json_delta` (partial JSON, concatenated) fill it
  (https://docs.anthropic.com/en/api/messages-streaming).
- OpenAI Chat Completions stream: per choice, `delta.content`, `delta.refusal` and `delta.tool_calls[i]`
  whose `function.arguments` arrive in fragments (https://platform.openai.com/docs/api-reference/chat-streaming).
- OpenAI Responses stream: `response.output_item.added` opens item `output_index`; text, refusal,
  function-call-argument and reasoning deltas fill it; `response.output_item.done` replaces it with the final
  item (https://platform.openai.com/docs/api-reference/responses-streaming).

`outline_request` lays out a request body: its settings, tools, system blocks and messages, each with the
path (`system[1]`, `messages[3].content[0]`) that rules/json_diff.py uses for what sluice changed.

Fails open: provider input never raises here; what cannot be read is shown as it came.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rules.sse import SSEParser
from rules.usage import Reading, StreamReader, read_response_body

JSONObject = dict[str, Any]

# A block's JSON shown whole up to this many characters; longer ones are cut with a note.
OTHER_BLOCK_LIMIT = 2_000
NESTED_TOO_DEEPLY = "(nested too deeply to show)"


@dataclass(frozen=True, slots=True)
class Part:
    """One piece of the assistant's output.

    `kind` is "text", "thinking", "redacted_thinking", "refusal", "tool_call" (`name`, `call_id`, `text` the
    input as indented JSON), "tool_result" (a server tool's result; `name` its type) or "other" (a block of
    a type this module does not know, shown as compact JSON). `choice` numbers Chat Completions choices.
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


def is_event_stream(body: bytes, content_type: str | None = None) -> bool:
    """Whether a body is SSE: by its content type when known, else by how it starts."""
    if content_type:
        return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
    head = body.lstrip()[:16]
    return head.startswith((b"event:", b"data:", b":", b"id:"))


def reassemble(api: str, body: bytes, *, status: int = 200, streamed: bool | None = None) -> Transcript:
    """The assistant's output of one response body (decoded), streamed or whole.

    `streamed=None` sniffs the body. Raises KeyError only for an `api` no wire format has.
    """
    from rules.providers import wire_format  # not at import: the provider modules import this one

    if streamed is None:
        streamed = is_event_stream(body)
    if not streamed:
        reading = read_response_body(wire_format(api), body, status)
        obj = _json_object(body)
        return Transcript(api, False, tuple(_whole_body_parts(api, obj)) if obj else (), reading)
    reader = StreamReader(wire_format(api))
    reader.feed(body)
    reading = reader.finish()
    builder = _STREAM_BUILDERS.get(api, _NoParts)()
    parser = SSEParser()
    events = parser.feed(body)
    parser.close()
    for event in events:
        payload = _json_object(event.data)
        if payload is not None:
            builder.take(event.event, payload)
    return Transcript(api, True, tuple(builder.parts()), reading, len(events))


def _whole_body_parts(api: str, obj: Mapping[str, Any]) -> list[Part]:
    if api == "messages":
        return [_anthropic_part(block) for block in _objects(obj.get("content"))]
    if api == "chat":
        parts: list[Part] = []
        for position, choice in enumerate(_objects(obj.get("choices"))):
            number = _int(choice.get("index"), position)
            message = choice.get("message")
            if isinstance(message, Mapping):
                parts += _chat_message_parts(message, number)
        return parts
    if api == "responses":
        return [part for item in _objects(obj.get("output")) for part in _responses_parts(item)]
    return []


class _NoParts:
    def take(self, event: str | None, payload: JSONObject) -> None:
        return None

    def parts(self) -> list[Part]:
        return []


class _AnthropicStream(_NoParts):
    def __init__(self) -> None:
        self.blocks: dict[int, JSONObject] = {}
        self.pieces: dict[int, list[str]] = {}
        self.json: dict[int, list[str]] = {}

    def take(self, event: str | None, payload: JSONObject) -> None:
        kind = payload.get("type")
        index = payload.get("index")
        if not isinstance(index, int):
            return
        if kind == "content_block_start" and isinstance(payload.get("content_block"), Mapping):
            self.blocks[index] = dict(payload["content_block"])
            self.pieces[index], self.json[index] = [], []
        elif kind == "content_block_delta" and isinstance(payload.get("delta"), Mapping):
            delta = payload["delta"]
            self.blocks.setdefault(index, {"type": "text"})
            pieces, json_pieces = self.pieces.setdefault(index, []), self.json.setdefault(index, [])
            for key in ("text", "thinking"):
                if isinstance(delta.get(key), str) and delta.get("type") == f"{key}_delta":
                    pieces.append(delta[key])
            if delta.get("type") == "input_json_delta" and isinstance(delta.get("partial_json"), str):
                json_pieces.append(delta["partial_json"])

    def parts(self) -> list[Part]:
        parts = []
        for index in sorted(self.blocks):
            block = self.blocks[index]
            kind = block.get("type")
            pieces = "".join(self.pieces.get(index, []))
            if kind in ("text", "thinking"):
                block[kind] = str(block.get(kind) or "") + pieces
            partial = "".join(self.json.get(index, []))
            if partial:
                block["input"] = _loads_or_text(partial)
            parts.append(_anthropic_part(block))
        return parts


def _anthropic_part(block: Mapping[str, Any]) -> Part:
    kind = str(block.get("type") or "")
    if kind == "text":
        return Part("text", _str(block.get("text")))
    if kind == "thinking":
        return Part("thinking", _str(block.get("thinking")))
    if kind == "redacted_thinking":
        return Part("redacted_thinking", "(redacted by the provider)")
    if kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
        return Part("tool_call", pretty_json(block.get("input", {})), _name(block), _id(block.get("id")))
    if kind.endswith("_tool_result"):
        return Part("tool_result", _compact(block.get("content")), kind, _id(block.get("tool_use_id")))
    return Part("other", _compact(block), kind or None)


class _ChatStream(_NoParts):
    def __init__(self) -> None:
        self.choices: dict[int, JSONObject] = {}

    def take(self, event: str | None, payload: JSONObject) -> None:
        for choice in _objects(payload.get("choices")):
            number = _int(choice.get("index"), 0)
            delta = choice.get("delta")
            if not isinstance(delta, Mapping):
                continue
            state = self.choices.setdefault(
                number, {"content": [], "reasoning": [], "refusal": [], "tool_calls": {}}
            )
            for key, source in (("content", "content"), ("refusal", "refusal"), ("reasoning", "reasoning")):
                if isinstance(delta.get(source), str):
                    state[key].append(delta[source])
            if isinstance(delta.get("reasoning_content"), str):  # OpenAI-compatible servers' spelling
                state["reasoning"].append(delta["reasoning_content"])
            for position, call in enumerate(_objects(delta.get("tool_calls"))):
                slot = call.get("index") if isinstance(call.get("index"), int) else position
                entry = state["tool_calls"].setdefault(slot, {"id": None, "name": "", "arguments": []})
                if isinstance(call.get("id"), str):
                    entry["id"] = call["id"]
                function = call.get("function")
                if isinstance(function, Mapping):
                    if isinstance(function.get("name"), str):
                        entry["name"] += function["name"]
                    if isinstance(function.get("arguments"), str):
                        entry["arguments"].append(function["arguments"])

    def parts(self) -> list[Part]:
        parts: list[Part] = []
        for number in sorted(self.choices):
            state = self.choices[number]
            message: JSONObject = {
                "reasoning_content": "".join(state["reasoning"]) or None,
                "content": "".join(state["content"]) or None,
                "refusal": "".join(state["refusal"]) or None,
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["name"], "arguments": "".join(call["arguments"])},
                    }
                    for _, call in sorted(state["tool_calls"].items())
                ],
            }
            parts += _chat_message_parts(message, number)
        return parts


def _chat_message_parts(message: Mapping[str, Any], choice: int) -> list[Part]:
    parts = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        parts.append(Part("thinking", reasoning, choice=choice))
    content = message.get("content")
    if isinstance(content, str) and content:
        parts.append(Part("text", content, choice=choice))
    elif isinstance(content, list):
        for item in _objects(content):
            if item.get("type") in ("text", "output_text"):
                parts.append(Part("text", _str(item.get("text")), choice=choice))
            elif item.get("type") == "refusal":
                parts.append(Part("refusal", _str(item.get("refusal")), choice=choice))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append(Part("refusal", refusal, choice=choice))
    for call in _objects(message.get("tool_calls")):
        function = _mapping(call.get("function"))
        text = arguments_text(function.get("arguments"))
        parts.append(Part("tool_call", text, _str(function.get("name")) or None, _id(call.get("id")), choice))
    return parts


# Responses content deltas, by the content part type they fill.
_CONTENT_DELTAS = {
    "response.output_text.delta": "output_text",
    "response.refusal.delta": "refusal",
    "response.reasoning_text.delta": "reasoning_text",
}


class _ResponsesStream(_NoParts):
    def __init__(self) -> None:
        self.items: dict[int, JSONObject] = {}
        self.final: list[JSONObject] | None = None

    def take(self, event: str | None, payload: JSONObject) -> None:
        kind = str(payload.get("type") or event or "")
        index = payload.get("output_index")
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            response = payload.get("response")
            output = response.get("output") if isinstance(response, Mapping) else None
            if isinstance(output, list) and output:
                self.final = _objects(output)
            return
        if not isinstance(index, int):
            return
        if kind in ("response.output_item.added", "response.output_item.done"):
            if isinstance(payload.get("item"), Mapping):
                try:
                    self.items[index] = json.loads(json.dumps(payload["item"]))  # our own copy to fill in
                except RecursionError:  # nested too deeply to copy: shown as the final output has it
                    self.items.pop(index, None)
            return
        # A delta for an item whose `output_item.added` was not seen: the delta says what the item is.
        if "reasoning" in kind:
            default: JSONObject = {"type": "reasoning", "summary": []}
        elif "call" in kind:
            default = {"type": "function_call" if "function" in kind else "custom_tool_call"}
        else:
            default = {"type": "message", "content": []}
        item = self.items.setdefault(index, default)
        delta = payload.get("delta")
        if not isinstance(delta, str):
            return
        if kind in _CONTENT_DELTAS:
            part_type = _CONTENT_DELTAS[kind]
            key = "refusal" if part_type == "refusal" else "text"
            _slot(item, "content", payload.get("content_index"), {"type": part_type, key: ""})[key] += delta
        elif kind == "response.reasoning_summary_text.delta":
            _slot(item, "summary", payload.get("summary_index"), {"type": "summary_text", "text": ""})[
                "text"
            ] += delta
        elif kind in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
            key = "arguments" if "function" in kind else "input"
            item[key] = _str(item.get(key)) + delta

    def parts(self) -> list[Part]:
        items = [self.items[index] for index in sorted(self.items)]
        if not items and self.final:
            items = self.final
        return [part for item in items for part in _responses_parts(item)]


def _slot(item: JSONObject, key: str, index: object, empty: JSONObject) -> JSONObject:
    """`item[key][index]`, created (with the slots before it) when the stream has not sent it yet."""
    slots = item.get(key)
    if not isinstance(slots, list):
        slots = item[key] = []
    position = index if isinstance(index, int) and 0 <= index < 1_000 else len(slots)
    while len(slots) <= position:
        slots.append(dict(empty))
    if not isinstance(slots[position], dict):
        slots[position] = dict(empty)
    for name, value in empty.items():
        if not isinstance(slots[position].get(name), type(value)):
            slots[position][name] = value
    return slots[position]  # type: ignore[no-any-return]


def _responses_parts(item: Mapping[str, Any]) -> list[Part]:
    kind = str(item.get("type") or "")
    if kind == "message":
        parts = []
        for content in _objects(item.get("content")):
            if content.get("type") == "refusal":
                parts.append(Part("refusal", _str(content.get("refusal"))))
            elif isinstance(content.get("text"), str):
                parts.append(Part("text", content["text"]))
        return parts
    if kind == "reasoning":
        texts = [_str(s.get("text")) for s in _objects(item.get("summary"))]
        texts += [_str(c.get("text")) for c in _objects(item.get("content"))]
        text = "\n\n".join(t for t in texts if t)
        if not text:
            text = "(encrypted by the provider)" if item.get("encrypted_content") else "(no summary returned)"
        return [Part("thinking", text)]
    if kind in ("function_call", "custom_tool_call"):
        text = arguments_text(item.get("arguments") if kind == "function_call" else item.get("input"))
        return [Part("tool_call", text, _str(item.get("name")) or None, _id(item.get("call_id")))]
    shown = {k: v for k, v in item.items() if k not in ("id", "status", "type")}
    return [Part("tool_call" if kind.endswith("_call") else "other", _compact(shown), kind or None)]


_STREAM_BUILDERS: dict[str, type[_NoParts]] = {
    "messages": _AnthropicStream,
    "chat": _ChatStream,
    "responses": _ResponsesStream,
}


# --- requests --------------------------------------------------------------------------------------------

_SETTINGS = (
    "model",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "stream",
    "temperature",
    "top_p",
    "thinking",
    "reasoning",
    "reasoning_effort",
    "tool_choice",
    "metadata",
    "user",
    "safety_identifier",
    "previous_response_id",
    "service_tier",
    "cache_control",
)


def outline_request(api: str, body: Mapping[str, Any]) -> RequestOutline:
    """A request body's settings, tools, system blocks and messages, in prompt order. Never raises."""
    settings = tuple((key, _setting(body[key])) for key in _SETTINGS if key in body)
    tools = tuple(_tool_entry(index, tool) for index, tool in enumerate(body.get("tools") or []))
    if api in ("messages", "count_tokens"):
        system_blocks = _anthropic_system(body.get("system"))
        return RequestOutline(settings, tools, system_blocks, _anthropic_messages(body))
    if api == "chat":
        system: list[Entry] = []
        messages: list[Entry] = []
        for index, message in enumerate(_objects(body.get("messages"))):
            role = _str(message.get("role"))
            target = system if role in ("system", "developer") else messages
            target += _chat_message_entries(f"messages[{index}]", message)
        return RequestOutline(settings, tools, tuple(system), tuple(messages))
    if api == "responses":
        instructions = body.get("instructions")
        system_entries: tuple[Entry, ...] = ()
        if isinstance(instructions, str):
            system_entries = (Entry("instructions", "text", instructions, "system"),)
        items = body.get("input")
        if isinstance(items, str):
            return RequestOutline(settings, tools, system_entries, (Entry("input", "text", items, "user"),))
        entries: list[Entry] = []
        for index, item in enumerate(items if isinstance(items, list) else []):
            entries += _responses_input_entries(f"input[{index}]", item)
        return RequestOutline(settings, tools, system_entries, tuple(entries))
    return RequestOutline(settings, tools)


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else _compact(value, limit=300)


def _cache_ttl(block: object) -> str | None:
    if not isinstance(block, Mapping) or not isinstance(block.get("cache_control"), Mapping):
        return None
    ttl = block["cache_control"].get("ttl")
    return ttl if isinstance(ttl, str) else "5m"


def _tool_entry(index: int, tool: object) -> Entry:
    if not isinstance(tool, Mapping):
        return Entry(f"tools[{index}]", "tool", _compact(tool))
    function = _mapping(tool.get("function")) or tool
    name = _str(function.get("name")) or _str(tool.get("type")) or None
    description = _str(function.get("description")).strip().splitlines()
    return Entry(
        f"tools[{index}]",
        _str(tool.get("type")) or "tool",
        description[0] if description else "",
        name=name,
        cache=_cache_ttl(tool),
    )


def _anthropic_system(system: object) -> tuple[Entry, ...]:
    if isinstance(system, str):
        return (Entry("system", "text", system, "system"),)
    if isinstance(system, list):
        return tuple(_anthropic_block_entry(f"system[{i}]", b, "system") for i, b in enumerate(system))
    return ()


def _anthropic_messages(body: Mapping[str, Any]) -> tuple[Entry, ...]:
    entries: list[Entry] = []
    for index, message in enumerate(_objects(body.get("messages"))):
        role = _str(message.get("role"))
        content = message.get("content")
        if isinstance(content, str):
            entries.append(Entry(f"messages[{index}].content", "text", content, role))
        elif isinstance(content, list):
            entries += [
                _anthropic_block_entry(f"messages[{index}].content[{j}]", block, role)
                for j, block in enumerate(content)
            ]
        else:
            entries.append(Entry(f"messages[{index}]", "message", _compact(message), role))
    return tuple(entries)


def _anthropic_block_entry(path: str, block: object, role: str) -> Entry:
    if not isinstance(block, Mapping):
        return Entry(path, "block", _compact(block), role)
    kind = _str(block.get("type")) or "block"
    cache = _cache_ttl(block)
    if kind == "text":
        return Entry(path, kind, _str(block.get("text")), role, cache=cache)
    if kind == "thinking":
        return Entry(path, kind, _str(block.get("thinking")), role, cache=cache)
    if kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
        return Entry(path, "tool_use", pretty_json(block.get("input", {})), role, _name(block), cache)
    if kind == "tool_result":
        text = _content_text(block.get("content"))
        return Entry(path, kind, text, role, _id(block.get("tool_use_id")), cache)
    if kind in ("image", "document"):
        source = _mapping(block.get("source"))
        described = _str(source.get("media_type")) or _str(source.get("type")) or kind
        return Entry(path, kind, f"[{kind}: {described}]", role, cache=cache)
    shown = {k: v for k, v in block.items() if k not in ("type", "cache_control")}
    return Entry(path, kind, _compact(shown), role, cache=cache)


def _content_text(content: object) -> str:
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
                texts.append(_compact(block))
        return "\n".join(texts)
    return "" if content is None else _compact(content)


def _chat_message_entries(path: str, message: Mapping[str, Any]) -> list[Entry]:
    role = _str(message.get("role"))
    entries = []
    content = message.get("content")
    if content is not None:
        kind = "tool_result" if role == "tool" else "text"
        name = _id(message.get("tool_call_id")) if role == "tool" else None
        entries.append(Entry(path, kind, _content_text(content), role, name))
    for position, call in enumerate(_objects(message.get("tool_calls"))):
        function = _mapping(call.get("function"))
        text = arguments_text(function.get("arguments"))
        name = _str(function.get("name")) or None
        entries.append(Entry(f"{path}.tool_calls[{position}]", "tool_use", text, role, name))
    return entries or [Entry(path, "message", _compact(message), role)]


def _responses_input_entries(path: str, item: object) -> list[Entry]:
    if not isinstance(item, Mapping):
        return [Entry(path, "item", _compact(item))]
    kind = _str(item.get("type")) or "message"
    role = _str(item.get("role"))
    if kind == "message" or "role" in item:
        return [Entry(path, "text", _content_text(item.get("content")), role or "user")]
    if kind == "function_call":
        text = arguments_text(item.get("arguments"))
        return [Entry(path, "tool_use", text, "assistant", _str(item.get("name")) or None)]
    if kind == "function_call_output":
        output = _content_text(item.get("output"))
        return [Entry(path, "tool_result", output, "tool", _id(item.get("call_id")))]
    if kind == "reasoning":
        summary = "\n\n".join(_str(s.get("text")) for s in _objects(item.get("summary")))
        return [Entry(path, "thinking", summary or "(encrypted)", "assistant")]
    shown = {k: v for k, v in item.items() if k not in ("type", "id", "status")}
    return [Entry(path, kind, _compact(shown), role)]


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
    """A tool call's arguments as indented JSON (OpenAI sends a JSON string, Anthropic an object)."""
    return pretty_json(_loads_or_text(raw) if isinstance(raw, str) else raw)


def _loads_or_text(text: str) -> Any:
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _Unparsed(text)


def _compact(value: Any, limit: int = OTHER_BLOCK_LIMIT) -> str:
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


def _objects(value: object) -> list[JSONObject]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _id(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _name(block: Mapping[str, Any]) -> str | None:
    return _id(block.get("name"))


def join_texts(parts: Iterable[Part], kind: str = "text") -> str:
    """All output of one kind, concatenated: the assistant's reply as one string."""
    return "".join(part.text for part in parts if part.kind == kind)
