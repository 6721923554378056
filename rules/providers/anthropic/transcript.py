"""Anthropic Messages as a person reads it (rules/transcript.py): the assistant's content blocks, whole or
streamed, and a request's system blocks and messages.

A stream: `content_block_start` opens block `index`; `text_delta`, `thinking_delta` and `input_json_delta`
(partial JSON, concatenated) fill it (https://docs.anthropic.com/en/api/messages-streaming). A token count
(`count_tokens`) is laid out like a message request; its answer has no content to show.

Fails open: provider input never raises here; what cannot be read is shown as it came.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rules.transcript import (
    Entry,
    JSONObject,
    Part,
    RequestOutline,
    as_id,
    as_mapping,
    as_str,
    cache_ttl,
    compact,
    content_text,
    loads_or_text,
    objects,
    pretty_json,
    settings_of,
    tool_entries,
)

# The request's settings shown above its prompt, in this order.
SETTINGS = (
    "model",
    "max_tokens",
    "stream",
    "temperature",
    "top_p",
    "thinking",
    "tool_choice",
    "metadata",
    "service_tier",
    "cache_control",
)

_TOOL_USES = ("tool_use", "server_tool_use", "mcp_tool_use")


def body_parts(message: Mapping[str, Any]) -> list[Part]:
    """A whole message's content blocks, in order."""
    return [_part(block) for block in objects(message.get("content"))]


class MessagesStream:
    """A stream's content blocks, by index, filled by their deltas."""

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
                block["input"] = loads_or_text(partial)
            parts.append(_part(block))
        return parts


def _part(block: Mapping[str, Any]) -> Part:
    kind = str(block.get("type") or "")
    if kind == "text":
        return Part("text", as_str(block.get("text")))
    if kind == "thinking":
        return Part("thinking", as_str(block.get("thinking")))
    if kind == "redacted_thinking":
        return Part("redacted_thinking", "(redacted by the provider)")
    if kind in _TOOL_USES:
        return Part("tool_call", pretty_json(block.get("input", {})), _name(block), as_id(block.get("id")))
    if kind.endswith("_tool_result"):
        return Part("tool_result", compact(block.get("content")), kind, as_id(block.get("tool_use_id")))
    return Part("other", compact(block), kind or None)


# --- requests --------------------------------------------------------------------------------------------


def outline(body: Mapping[str, Any]) -> RequestOutline:
    """Settings, tools, `system` (a string or blocks) and each message's content blocks."""
    return RequestOutline(
        settings_of(body, SETTINGS), tool_entries(body), _system(body.get("system")), _messages(body)
    )


def _system(system: object) -> tuple[Entry, ...]:
    if isinstance(system, str):
        return (Entry("system", "text", system, "system"),)
    if isinstance(system, list):
        return tuple(_block_entry(f"system[{i}]", b, "system") for i, b in enumerate(system))
    return ()


def _messages(body: Mapping[str, Any]) -> tuple[Entry, ...]:
    entries: list[Entry] = []
    for index, message in enumerate(objects(body.get("messages"))):
        role = as_str(message.get("role"))
        content = message.get("content")
        if isinstance(content, str):
            entries.append(Entry(f"messages[{index}].content", "text", content, role))
        elif isinstance(content, list):
            entries += [
                _block_entry(f"messages[{index}].content[{j}]", block, role)
                for j, block in enumerate(content)
            ]
        else:
            entries.append(Entry(f"messages[{index}]", "message", compact(message), role))
    return tuple(entries)


def _block_entry(path: str, block: object, role: str) -> Entry:
    if not isinstance(block, Mapping):
        return Entry(path, "block", compact(block), role)
    kind = as_str(block.get("type")) or "block"
    cache = cache_ttl(block)
    if kind == "text":
        return Entry(path, kind, as_str(block.get("text")), role, cache=cache)
    if kind == "thinking":
        return Entry(path, kind, as_str(block.get("thinking")), role, cache=cache)
    if kind in _TOOL_USES:
        return Entry(path, "tool_use", pretty_json(block.get("input", {})), role, _name(block), cache)
    if kind == "tool_result":
        text = content_text(block.get("content"))
        return Entry(path, kind, text, role, as_id(block.get("tool_use_id")), cache)
    if kind in ("image", "document"):
        source = as_mapping(block.get("source"))
        described = as_str(source.get("media_type")) or as_str(source.get("type")) or kind
        return Entry(path, kind, f"[{kind}: {described}]", role, cache=cache)
    shown = {k: v for k, v in block.items() if k not in ("type", "cache_control")}
    return Entry(path, kind, compact(shown), role, cache=cache)


def _name(block: Mapping[str, Any]) -> str | None:
    return as_id(block.get("name"))
