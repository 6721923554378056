"""What sluice does to a Gemini request body (rules/rewrite.py runs it): the operator's system blocks, as
parts of `systemInstruction` (https://ai.google.dev/api/generate-content#request-body: a Content whose
`parts` are text). The client's spelling of the field (`system_instruction`) is kept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rules.config import SystemBlock
from rules.providers.gemini.fields import key_of
from rules.rewrite import JSONObject, new_blocks


def inject_system(body: JSONObject, blocks: Sequence[SystemBlock]) -> tuple[JSONObject, list[str], list[Any]]:
    """Each block as a text part after the instruction's own parts; a block whose text a part already holds
    is not added again. An instruction of a shape Google does not take (not an object with a `parts` list)
    is left as sent."""
    key = key_of(body, "systemInstruction") or "systemInstruction"
    instruction = body.get(key)
    if instruction is None:
        instruction = {}
    if not isinstance(instruction, dict):
        return body, [], []
    parts = instruction.get("parts", [])
    if not isinstance(parts, list):
        return body, [], []
    present = {part["text"] for part in parts if isinstance(part, dict) and isinstance(part.get("text"), str)}
    added = new_blocks(blocks, present)
    if not added:
        return body, [], []
    new_parts = [*parts, *({"text": block.text} for block in added)]
    return {**body, key: {**instruction, "parts": new_parts}}, [block.name for block in added], []
