"""Gemini as a person reads it (rules/transcript.py): each candidate's parts, whole or streamed, and a
request's system instruction and contents.

An answer's candidate holds `content.parts`: text, thought summaries (`thought: true`), function calls;
a stream sends each candidate's parts in pieces across chunks, so consecutive pieces of one kind are
joined. A request lays out `systemInstruction.parts` and each of `contents[i].parts`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rules.providers.gemini.fields import get, key_of
from rules.transcript import (
    Entry,
    JSONObject,
    Part,
    RequestOutline,
    as_int,
    as_mapping,
    as_str,
    compact,
    objects,
    pretty_json,
    settings_of,
)

SETTINGS = ("generationConfig", "toolConfig", "safetySettings", "cachedContent", "labels")


def body_parts(answer: Mapping[str, Any]) -> list[Part]:
    """A whole answer's candidates' parts, in order."""
    parts: list[Part] = []
    for position, candidate in enumerate(objects(answer.get("candidates"))):
        choice = as_int(candidate.get("index"), position)
        parts += [_part(part, choice) for part in objects(as_mapping(candidate.get("content")).get("parts"))]
    return parts


class GenerateStream:
    """A stream's parts by candidate; a piece of text continues the part before it when of one kind."""

    def __init__(self) -> None:
        self.by_choice: dict[int, list[Part]] = {}

    def take(self, event: str | None, payload: JSONObject) -> None:
        for position, candidate in enumerate(objects(payload.get("candidates"))):
            choice = as_int(candidate.get("index"), position)
            found = self.by_choice.setdefault(choice, [])
            for piece in objects(as_mapping(candidate.get("content")).get("parts")):
                part = _part(piece, choice)
                last = found[-1] if found else None
                if last is not None and last.kind == part.kind and part.kind in ("text", "thinking"):
                    found[-1] = Part(part.kind, last.text + part.text, choice=choice)
                else:
                    found.append(part)

    def parts(self) -> list[Part]:
        return [part for choice in sorted(self.by_choice) for part in self.by_choice[choice]]


def _part(part: Mapping[str, Any], choice: int) -> Part:
    if isinstance(part.get("text"), str):
        return Part("thinking" if part.get("thought") is True else "text", part["text"], choice=choice)
    call = get(part, "functionCall")
    if isinstance(call, Mapping):
        name = as_str(call.get("name")) or None
        return Part(
            "tool_call", pretty_json(call.get("args", {})), name, as_str(call.get("id")) or None, choice
        )
    shown = {key: value for key, value in part.items() if key not in ("thought", "thoughtSignature")}
    return Part("other", compact(shown), choice=choice)


# --- requests --------------------------------------------------------------------------------------------


def outline(body: Mapping[str, Any]) -> RequestOutline:
    """Settings, tools (each function declaration), the system instruction's parts, each content's parts."""
    settings = settings_of(body, [key for name in SETTINGS if (key := key_of(body, name)) is not None])
    tools: list[Entry] = []
    for index, tool in enumerate(objects(body.get("tools"))):
        declarations = objects(get(tool, "functionDeclarations"))
        for position, declaration in enumerate(declarations):
            path = f"tools[{index}].functionDeclarations[{position}]"
            tools.append(Entry(path, "function", compact(declaration), name=as_str(declaration.get("name"))))
        if not declarations:
            tools.append(Entry(f"tools[{index}]", "tool", compact(tool)))
    system: list[Entry] = []
    key = key_of(body, "systemInstruction")
    instruction = body.get(key) if key else None
    if isinstance(instruction, Mapping):
        for index, part in enumerate(objects(instruction.get("parts"))):
            system.append(_entry(f"{key}.parts[{index}]", part, "system"))
    elif isinstance(instruction, str):
        system.append(Entry(str(key), "text", instruction, "system"))
    messages: list[Entry] = []
    for index, content in enumerate(objects(body.get("contents"))):
        role = as_str(content.get("role")) or "user"
        for position, part in enumerate(objects(content.get("parts"))):
            messages.append(_entry(f"contents[{index}].parts[{position}]", part, role))
    return RequestOutline(settings, tuple(tools), tuple(system), tuple(messages))


def _entry(path: str, part: Mapping[str, Any], role: str) -> Entry:
    if isinstance(part.get("text"), str):
        return Entry(path, "thinking" if part.get("thought") is True else "text", part["text"], role)
    call = get(part, "functionCall")
    if isinstance(call, Mapping):
        return Entry(path, "tool_use", pretty_json(call.get("args", {})), role, as_str(call.get("name")))
    answer = get(part, "functionResponse")
    if isinstance(answer, Mapping):
        return Entry(
            path, "tool_result", pretty_json(answer.get("response", {})), role, as_str(answer.get("name"))
        )
    data = get(part, "inlineData") or get(part, "fileData")
    if isinstance(data, Mapping):
        kind = as_str(get(data, "mimeType")) or "data"
        return Entry(path, "media", f"[{kind}]", role)
    return Entry(path, "part", compact(part), role)
