"""OpenAI Chat Completions and Responses as a person reads them (rules/transcript.py): the answer's choices
or output items, whole or streamed, and a request's messages or input items.

- Chat Completions stream: per choice, `delta.content`, `delta.refusal`, `delta.reasoning_content`
  (OpenAI-compatible servers) and `delta.tool_calls[i]` whose `function.arguments` arrive in fragments
  (https://platform.openai.com/docs/api-reference/chat-streaming). A request's system and developer
  messages are its system prompt.
- Responses stream: `response.output_item.added` opens item `output_index`; text, refusal,
  function-call-argument and reasoning deltas fill it; `response.output_item.done` replaces it with the final
  item (https://platform.openai.com/docs/api-reference/responses-streaming). A request's `instructions` are
  its system prompt.

Fails open: provider input never raises here; what cannot be read is shown as it came.
"""

from __future__ import annotations

import json
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

# --- Chat Completions ------------------------------------------------------------------------------------

# A request's settings shown above its prompt, in this order.
CHAT_SETTINGS = (
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


def chat_body_parts(completion: Mapping[str, Any]) -> list[Part]:
    """Each choice's message, numbered by the choice's `index`."""
    parts: list[Part] = []
    for position, choice in enumerate(objects(completion.get("choices"))):
        number = as_int(choice.get("index"), position)
        message = choice.get("message")
        if isinstance(message, Mapping):
            parts += _chat_message_parts(message, number)
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


# --- Chat Completions requests ---------------------------------------------------------------------------


def chat_outline(body: Mapping[str, Any]) -> RequestOutline:
    """Settings, tools, and the messages: those of the system and developer roles as the system prompt."""
    system: list[Entry] = []
    messages: list[Entry] = []
    for index, message in enumerate(objects(body.get("messages"))):
        role = as_str(message.get("role"))
        target = system if role in ("system", "developer") else messages
        target += _chat_message_entries(f"messages[{index}]", message)
    return RequestOutline(
        settings_of(body, CHAT_SETTINGS), tool_entries(body), tuple(system), tuple(messages)
    )


def _chat_message_entries(path: str, message: Mapping[str, Any]) -> list[Entry]:
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


# --- Responses -------------------------------------------------------------------------------------------

# A request's settings shown above its prompt, in this order.
RESPONSES_SETTINGS = (
    "model",
    "max_output_tokens",
    "stream",
    "temperature",
    "top_p",
    "reasoning",
    "tool_choice",
    "metadata",
    "user",
    "safety_identifier",
    "previous_response_id",
    "service_tier",
)


def responses_body_parts(response: Mapping[str, Any]) -> list[Part]:
    """The output items, in order."""
    return [part for item in objects(response.get("output")) for part in _responses_parts(item)]


# Responses content deltas, by the content part type they fill.
_CONTENT_DELTAS = {
    "response.output_text.delta": "output_text",
    "response.refusal.delta": "refusal",
    "response.reasoning_text.delta": "reasoning_text",
}


class ResponsesStream:
    """The output items, by `output_index`, filled by their deltas until a done item replaces one."""

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
                self.final = objects(output)
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
            item[key] = as_str(item.get(key)) + delta

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
        for content in objects(item.get("content")):
            if content.get("type") == "refusal":
                parts.append(Part("refusal", as_str(content.get("refusal"))))
            elif isinstance(content.get("text"), str):
                parts.append(Part("text", content["text"]))
        return parts
    if kind == "reasoning":
        texts = [as_str(s.get("text")) for s in objects(item.get("summary"))]
        texts += [as_str(c.get("text")) for c in objects(item.get("content"))]
        text = "\n\n".join(t for t in texts if t)
        if not text:
            text = "(encrypted by the provider)" if item.get("encrypted_content") else "(no summary returned)"
        return [Part("thinking", text)]
    if kind in ("function_call", "custom_tool_call"):
        text = arguments_text(item.get("arguments") if kind == "function_call" else item.get("input"))
        return [Part("tool_call", text, as_str(item.get("name")) or None, as_id(item.get("call_id")))]
    shown = {k: v for k, v in item.items() if k not in ("id", "status", "type")}
    return [Part("tool_call" if kind.endswith("_call") else "other", compact(shown), kind or None)]


# --- Responses requests ----------------------------------------------------------------------------------


def responses_outline(body: Mapping[str, Any]) -> RequestOutline:
    """Settings, tools, `instructions` as the system prompt, and `input` (a string or items)."""
    known = settings_of(body, RESPONSES_SETTINGS), tool_entries(body)
    instructions = body.get("instructions")
    system: tuple[Entry, ...] = ()
    if isinstance(instructions, str):
        system = (Entry("instructions", "text", instructions, "system"),)
    items = body.get("input")
    if isinstance(items, str):
        return RequestOutline(*known, system, (Entry("input", "text", items, "user"),))
    entries: list[Entry] = []
    for index, item in enumerate(items if isinstance(items, list) else []):
        entries += _responses_input_entries(f"input[{index}]", item)
    return RequestOutline(*known, system, tuple(entries))


def _responses_input_entries(path: str, item: object) -> list[Entry]:
    if not isinstance(item, Mapping):
        return [Entry(path, "item", compact(item))]
    kind = as_str(item.get("type")) or "message"
    role = as_str(item.get("role"))
    if kind == "message" or "role" in item:
        return [Entry(path, "text", content_text(item.get("content")), role or "user")]
    if kind == "function_call":
        text = arguments_text(item.get("arguments"))
        return [Entry(path, "tool_use", text, "assistant", as_str(item.get("name")) or None)]
    if kind == "function_call_output":
        output = content_text(item.get("output"))
        return [Entry(path, "tool_result", output, "tool", as_id(item.get("call_id")))]
    if kind == "reasoning":
        summary = "\n\n".join(as_str(s.get("text")) for s in objects(item.get("summary")))
        return [Entry(path, "thinking", summary or "(encrypted)", "assistant")]
    shown = {k: v for k, v in item.items() if k not in ("type", "id", "status")}
    return [Entry(path, kind, compact(shown), role)]
