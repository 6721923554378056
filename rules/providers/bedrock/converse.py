"""Bedrock's Converse API (`POST /model/{modelId}/converse`, and `/converse-stream`): one body shape for
every model Bedrock serves. https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html

Request: `messages[].content[]` blocks (`{"text"}`, `{"image"}`, `{"toolUse"}`, `{"toolResult"}`,
`{"cachePoint"}`, ...), `system[]` blocks (`{"text"}`, `{"cachePoint"}`), `inferenceConfig.maxTokens`.
Answer: `output.message.content[]`, `stopReason`, `usage` {`inputTokens` (uncached input, as Anthropic's
`input_tokens`), `outputTokens`, `cacheReadInputTokens`, `cacheWriteInputTokens`, `totalTokens`}.
A stream's event-stream frames are named events: `messageStart`, `contentBlockStart`, `contentBlockDelta`,
`contentBlockStop`, `messageStop`, then `metadata` (the usage) last; any other name is an exception the
stream ended with (`throttlingException`, `modelStreamErrorException`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rules.providers.bedrock.invoke import exception_text
from rules.rewrite import new_blocks
from rules.transcript import (
    Entry,
    JSONObject,
    Part,
    RequestOutline,
    as_int,
    as_mapping,
    as_str,
    compact,
    content_text,
    objects,
    pretty_json,
    settings_of,
)
from rules.usage import Reading, Usage, json_object, suspect_text, text, tokens

if TYPE_CHECKING:
    from rules.config import SystemBlock

SETTINGS = ("inferenceConfig", "toolConfig", "guardrailConfig", "additionalModelRequestFields")
TERMINAL = "metadata"
_EVENTS = frozenset(
    {"messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop", "messageStop", TERMINAL}
)


# --- usage --------------------------------------------------------------------------------------------------


def read_usage(usage: Mapping[str, object]) -> Usage:
    """Converse's counts in sluice's columns. Its `cacheWriteInputTokens` carries no TTL: Bedrock's
    default cache point is 5 minutes, so the writes are counted as 5-minute writes unless `cacheDetails`
    splits them by TTL."""
    suspect: dict[str, str] = {}
    found = Usage(
        input_tokens=tokens(usage.get("inputTokens"), "inputTokens", suspect),
        cache_read_tokens=tokens(usage.get("cacheReadInputTokens"), "cacheReadInputTokens", suspect),
        cache_write_5m_tokens=tokens(usage.get("cacheWriteInputTokens"), "cacheWriteInputTokens", suspect),
        output_tokens=tokens(usage.get("outputTokens"), "outputTokens", suspect),
    )
    by_ttl = _writes_by_ttl(usage.get("cacheDetails"), suspect)
    if by_ttl is not None:
        found.cache_write_5m_tokens, found.cache_write_1h_tokens = by_ttl
    found.suspect = suspect_text(suspect)
    return found


def _writes_by_ttl(details: object, suspect: dict[str, str]) -> tuple[int, int] | None:
    if not isinstance(details, list) or not details:
        return None
    totals = {"5m": 0, "1h": 0}
    for detail in details:
        if not isinstance(detail, Mapping) or detail.get("ttl") not in totals:
            return None
        count = tokens(detail.get("inputTokens"), f"cacheDetails.{detail.get('ttl')}", suspect)
        if count is None:
            return None
        totals[str(detail["ttl"])] += count
    return totals["5m"], totals["1h"]


def read_body(answer: Mapping[str, object]) -> Reading:
    reading = Reading(stop_reason=text(answer.get("stopReason")))
    usage = answer.get("usage")
    if isinstance(usage, Mapping):
        reading.usage = read_usage(usage)
        reading.usage_seen = True
    return reading


class ConverseEvents:
    """The frames of one ConverseStream answer (`WireFormat.stream_events`)."""

    __slots__ = ()

    def on_event(self, name: str | None, data: str, reading: Reading) -> bool:
        if name == "contentBlockDelta":  # the hot path: most of the stream, no parse
            return True
        if name not in _EVENTS:
            if reading.error is None:
                reading.error = exception_text(name, data)
            return False
        if name == "messageStop":
            payload = json_object(data)
            if payload is not None:
                reading.stop_reason = text(payload.get("stopReason")) or reading.stop_reason
        elif name == TERMINAL:
            payload = json_object(data)
            usage = payload.get("usage") if payload is not None else None
            if isinstance(usage, Mapping):
                reading.usage = read_usage(usage)
                reading.usage_seen = True
            reading.complete = True
        return False


# --- request rules ------------------------------------------------------------------------------------------


def inject_system(body: JSONObject, blocks: Sequence[SystemBlock]) -> tuple[JSONObject, list[str], list[Any]]:
    """Text blocks appended to `system` (a list of `{"text"}` / `{"cachePoint"}` blocks), each followed by
    a cache point when configured with `cache` (Bedrock caches the prefix up to a cache point; a 1-hour
    TTL is written, 5 minutes is its default). A `system` that is not a list is left alone (fails open)."""
    system = body.get("system")
    if system is None:
        system = []
    if not isinstance(system, list):
        return body, [], []
    present = {
        item["text"] for item in system if isinstance(item, dict) and isinstance(item.get("text"), str)
    }
    added = new_blocks(blocks, present)
    if not added:
        return body, [], []
    new_system = list(system)
    paths: list[Any] = []
    for block in added:
        paths.append(("system", len(new_system)))
        new_system.append({"text": block.text})
        if block.cache is not None:
            point: JSONObject = {"type": "default"}
            if block.cache == "1h":
                point["ttl"] = "1h"
            new_system.append({"cachePoint": point})
    return {**body, "system": new_system}, [block.name for block in added], paths


# --- transcript ---------------------------------------------------------------------------------------------


def body_parts(answer: Mapping[str, Any]) -> list[Part]:
    message = as_mapping(as_mapping(answer.get("output")).get("message"))
    return [_part(block) for block in objects(message.get("content"))]


def _part(block: Mapping[str, Any]) -> Part:
    if isinstance(block.get("text"), str):
        return Part("text", block["text"])
    reasoning = as_mapping(block.get("reasoningContent"))
    if reasoning:
        if "redactedContent" in reasoning:
            return Part("redacted_thinking", "(redacted by the provider)")
        return Part("thinking", as_str(as_mapping(reasoning.get("reasoningText")).get("text")))
    tool = as_mapping(block.get("toolUse"))
    if tool:
        return Part(
            "tool_call",
            pretty_json(tool.get("input", {})),
            as_str(tool.get("name")) or None,
            as_str(tool.get("toolUseId")) or None,
        )
    return Part("other", compact(block))


class ConverseStream:
    """A stream's content blocks by `contentBlockIndex`, filled by their deltas."""

    def __init__(self) -> None:
        self.kinds: dict[int, str] = {}
        self.names: dict[int, tuple[str | None, str | None]] = {}
        self.pieces: dict[int, list[str]] = {}

    def take(self, event: str | None, payload: JSONObject) -> None:
        index = as_int(payload.get("contentBlockIndex"), -1)
        if index < 0:
            return
        if event == "contentBlockStart":
            tool = as_mapping(as_mapping(payload.get("start")).get("toolUse"))
            if tool:
                self.kinds[index] = "tool_call"
                self.names[index] = (as_str(tool.get("name")) or None, as_str(tool.get("toolUseId")) or None)
        elif event == "contentBlockDelta":
            delta = as_mapping(payload.get("delta"))
            kind, piece = _delta_piece(delta)
            self.kinds.setdefault(index, kind)
            self.pieces.setdefault(index, []).append(piece)

    def parts(self) -> list[Part]:
        parts = []
        for index in sorted(self.kinds):
            kind, joined = self.kinds[index], "".join(self.pieces.get(index, []))
            if kind == "tool_call":
                name, call_id = self.names.get(index, (None, None))
                parts.append(Part(kind, pretty_json(_loads(joined)), name, call_id))
            else:
                parts.append(Part(kind, joined))
        return parts


def _delta_piece(delta: Mapping[str, Any]) -> tuple[str, str]:
    if isinstance(delta.get("text"), str):
        return "text", delta["text"]
    reasoning = as_mapping(delta.get("reasoningContent"))
    if reasoning:
        return "thinking", as_str(reasoning.get("text"))
    tool = as_mapping(delta.get("toolUse"))
    if tool:
        return "tool_call", as_str(tool.get("input"))
    return "other", compact(delta)


def _loads(raw: str) -> object:
    value = json_object(raw)
    return value if value is not None else raw


def outline(body: Mapping[str, Any]) -> RequestOutline:
    """Settings, tools (`toolConfig.tools[].toolSpec`), `system` blocks and each message's content blocks."""
    tools = tuple(
        Entry(
            f"toolConfig.tools[{i}]",
            "tool",
            compact(tool),
            name=as_str(as_mapping(tool.get("toolSpec")).get("name")) or None,
        )
        for i, tool in enumerate(objects(as_mapping(body.get("toolConfig")).get("tools")))
    )
    system = tuple(
        _entry(f"system[{i}]", block, "system") for i, block in enumerate(objects(body.get("system")))
    )
    messages: list[Entry] = []
    for i, message in enumerate(objects(body.get("messages"))):
        role = as_str(message.get("role"))
        messages += [
            _entry(f"messages[{i}].content[{j}]", block, role)
            for j, block in enumerate(objects(message.get("content")))
        ]
    return RequestOutline(settings_of(body, SETTINGS), tools, system, tuple(messages))


def _entry(path: str, block: Mapping[str, Any], role: str) -> Entry:
    if isinstance(block.get("text"), str):
        return Entry(path, "text", block["text"], role)
    if "cachePoint" in block:
        return Entry(path, "cache_point", compact(block["cachePoint"]), role)
    if "toolUse" in block:
        tool = as_mapping(block["toolUse"])
        return Entry(
            path, "tool_use", pretty_json(tool.get("input", {})), role, as_str(tool.get("name")) or None
        )
    if "toolResult" in block:
        result = as_mapping(block["toolResult"])
        return Entry(
            path,
            "tool_result",
            content_text(result.get("content")),
            role,
            as_str(result.get("toolUseId")) or None,
        )
    kind = next(iter(block), "block")
    return Entry(
        path, str(kind), f"[{kind}]" if kind in ("image", "document", "video") else compact(block), role
    )
