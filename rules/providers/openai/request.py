"""OpenAI Chat Completions and Responses request bodies: the hooks of the request rules (rules/rewrite.py).

Each hook takes a parsed body and returns a new one, or the very same object when it has nothing to do;
none mutates its input, and each fails open: a shape it does not know is returned unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rules.rewrite import JSONObject, new_blocks

if TYPE_CHECKING:
    from rules.config import SystemBlock

# OpenAI: "a maximum length of 128 characters" (Chat Completions / Responses `safety_identifier`).
SAFETY_IDENTIFIER_MAX = 128


# --- system blocks ------------------------------------------------------------------------------------


def inject_chat_system(
    body: JSONObject, blocks: Sequence[SystemBlock]
) -> tuple[JSONObject, list[str], list[Any]]:
    """One message per block after the leading system/developer messages, with role `developer` when the
    request already uses that role, `system` otherwise. A block whose text one of those messages already
    holds is not added again."""
    # https://platform.openai.com/docs/api-reference/chat/create (messages[].role system | developer)
    messages = body.get("messages")
    if not isinstance(messages, list):
        return body, [], []
    instruction_roles = {"system", "developer"}
    present: set[str] = set()
    uses_developer = False
    for message in messages:
        if isinstance(message, dict) and message.get("role") in instruction_roles:
            present |= _message_texts(message)
            uses_developer = uses_developer or message.get("role") == "developer"
    added = new_blocks(blocks, present)
    if not added:
        return body, [], []
    leading = 0
    while (
        leading < len(messages)
        and isinstance(messages[leading], dict)
        and messages[leading].get("role") in instruction_roles
    ):
        leading += 1
    role = "developer" if uses_developer else "system"
    inserted = [{"role": role, "content": block.text} for block in added]
    new_messages = [*messages[:leading], *inserted, *messages[leading:]]
    return {**body, "messages": new_messages}, [block.name for block in added], []


def _message_texts(message: JSONObject) -> set[str]:
    content = message.get("content")
    if isinstance(content, str):
        return {content}
    if isinstance(content, list):
        return {
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        }
    return set()


def inject_responses_system(
    body: JSONObject, blocks: Sequence[SystemBlock]
) -> tuple[JSONObject, list[str], list[Any]]:
    """Blocks appended to `instructions`, separated by a blank line; one already a blank-line-separated
    piece of it is not added again. `instructions` neither string nor null is left alone."""
    # https://platform.openai.com/docs/api-reference/responses/create (instructions: string)
    instructions = body.get("instructions")
    if instructions is None:
        instructions = ""
    if not isinstance(instructions, str):
        return body, [], []
    added: list[SystemBlock] = []
    combined = instructions
    for block in blocks:
        if combined and _has_segment(combined, block.text):
            continue
        combined = f"{combined}\n\n{block.text}" if combined else block.text
        added.append(block)
    if not added:
        return body, [], []
    return {**body, "instructions": combined}, [block.name for block in added], []


def _has_segment(instructions: str, text: str) -> bool:
    """Whether `text` is one of the blank-line-separated pieces of `instructions` (or all of it)."""
    separator = "\n\n"
    return (
        instructions == text
        or instructions.startswith(text + separator)
        or instructions.endswith(separator + text)
        or f"{separator}{text}{separator}" in instructions
    )


# --- identity -----------------------------------------------------------------------------------------


def stamp_safety_identifier(body: JSONObject, user_id: str) -> JSONObject:
    """`safety_identifier` (chat and responses), when absent or null; skipped when `user_id` is over
    OpenAI's 128 characters. Any other value, even "", is the client's."""
    if body.get("safety_identifier") is None and len(user_id) <= SAFETY_IDENTIFIER_MAX:
        return {**body, "safety_identifier": user_id}
    return body


# --- stream usage (chat) ------------------------------------------------------------------------------


def request_usage_in_stream(body: JSONObject) -> tuple[JSONObject, bool]:
    """Ask a Chat Completions stream for its usage chunk; returns (body, client_asked).

    Only a streamed request (`stream: true`) is changed: `stream_options.include_usage = true`, keeping any
    other stream options. `client_asked` is True when the client had already set it, in which case the body
    is returned unchanged; when sluice asks on the client's behalf, the addon must drop the extra
    `choices: []` chunk (`is_usage_only_chunk`) because clients that did not ask may crash on it.
    https://platform.openai.com/docs/api-reference/chat/create#chat-create-stream_options
    Fails open: a `stream_options` that is neither an object nor null is left as sent.
    """
    if body.get("stream") is not True:
        return body, False
    options = body.get("stream_options")
    if options is None:
        return {**body, "stream_options": {"include_usage": True}}, False
    if not isinstance(options, dict):
        return body, False
    if options.get("include_usage") is True:
        return body, True
    return {**body, "stream_options": {**options, "include_usage": True}}, False


def is_usage_only_chunk(data: str) -> bool:
    """Whether an SSE `data:` payload is the usage-only chunk: `choices: []` and a `usage` object.

    `[DONE]`, malformed JSON and ordinary chunks (which carry `"usage": null` once usage is on) are not.
    """
    text = data.strip()
    if not text.startswith("{"):
        return False
    try:
        chunk = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(chunk, dict) and chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)
