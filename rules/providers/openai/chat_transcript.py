"""OpenAI Chat Completions as a person reads it (rules/transcript.py): each choice's message, whole or
streamed, and a request's messages with the system and developer ones first.

A stream: per choice, `delta.content`, `delta.refusal`, `delta.reasoning_content` (OpenAI-compatible servers)
and `delta.tool_calls[i]` whose `function.arguments` arrive in fragments
(https://platform.openai.com/docs/api-reference/chat-streaming).

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
    arguments_text,
    as_id,
    as_int,
    as_mapping,
    as_str,
    compact,
    content_text,
    objects,
    settings_of,
    tool_entries,
)

# The request's settings shown above its prompt, in this order.
SETTINGS = (
    "model",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "temperature",
    "top_p",
    "thinking",  # OpenAI-compatible servers' spelling
    "reasoning",  # OpenAI-compatible gateways' spelling
    "reasoning_effort",
    "tool_choice",
    "metadata",
    "user",
    "safety_identifier",
    "service_tier",
)


def body_parts(completion: Mapping[str, Any]) -> list[Part]:
    """Each choice's message, numbered by the choice's `index`."""
    parts: list[Part] = []
    for position, choice in enumerate(objects(completion.get("choices"))):
        number = as_int(choice.get("index"), position)
        message = choice.get("message")
        if isinstance(message, Mapping):
            parts += _message_parts(message, number)
    return parts


class ChatStream:
    """Each choice's message put back together from its deltas."""

    def __init__(self) -> None:
        self.choices: dict[int, JSONObject] = {}

    def take(self, event: str | None, payload: JSONObject) -> None:
        for choice in objects(payload.get("choices")):
            number = as_int(choice.get("index"), 0)
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
            for position, call in enumerate(objects(delta.get("tool_calls"))):
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
            parts += _message_parts(message, number)
        return parts


def _message_parts(message: Mapping[str, Any], choice: int) -> list[Part]:
    parts = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        parts.append(Part("thinking", reasoning, choice=choice))
    content = message.get("content")
    if isinstance(content, str) and content:
        parts.append(Part("text", content, choice=choice))
    elif isinstance(content, list):
        for item in objects(content):
            if item.get("type") in ("text", "output_text"):
                parts.append(Part("text", as_str(item.get("text")), choice=choice))
            elif item.get("type") == "refusal":
                parts.append(Part("refusal", as_str(item.get("refusal")), choice=choice))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append(Part("refusal", refusal, choice=choice))
    for call in objects(message.get("tool_calls")):
        function = as_mapping(call.get("function"))
        text = arguments_text(function.get("arguments"))
        parts.append(
            Part("tool_call", text, as_str(function.get("name")) or None, as_id(call.get("id")), choice)
        )
    return parts


# --- requests --------------------------------------------------------------------------------------------


def outline(body: Mapping[str, Any]) -> RequestOutline:
    """Settings, tools, and the messages: those of the system and developer roles as the system prompt."""
    system: list[Entry] = []
    messages: list[Entry] = []
    for index, message in enumerate(objects(body.get("messages"))):
        role = as_str(message.get("role"))
        target = system if role in ("system", "developer") else messages
        target += _message_entries(f"messages[{index}]", message)
    return RequestOutline(settings_of(body, SETTINGS), tool_entries(body), tuple(system), tuple(messages))


def _message_entries(path: str, message: Mapping[str, Any]) -> list[Entry]:
    role = as_str(message.get("role"))
    entries = []
    content = message.get("content")
    if content is not None:
        kind = "tool_result" if role == "tool" else "text"
        name = as_id(message.get("tool_call_id")) if role == "tool" else None
        entries.append(Entry(path, kind, content_text(content), role, name))
    for position, call in enumerate(objects(message.get("tool_calls"))):
        function = as_mapping(call.get("function"))
        text = arguments_text(function.get("arguments"))
        name = as_str(function.get("name")) or None
        entries.append(Entry(f"{path}.tool_calls[{position}]", "tool_use", text, role, name))
    return entries or [Entry(path, "message", compact(message), role)]
