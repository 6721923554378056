"""Gemini's implicit prompt cache as rules/cache_health.py judges it: automatic, prefix-based, no markers
(https://ai.google.dev/gemini-api/docs/caching: on for 2.5 models and later, from 1,024 prompt tokens on
Flash, 2,048 on Pro; keep what repeats at the start). Prompt order: tools, the system instruction, then
each content. An explicit cache (`cachedContent`) is a resource of its own: part of the settings, so a
change of it explains a miss."""

from __future__ import annotations

from rules.cache_health import DEFAULT_TTL_SECONDS, Chain, PromptShape, automatic_shape, digest_text
from rules.providers.gemini.fields import get, key_of
from rules.rewrite import JSONObject


def prompt_shape(body: JSONObject) -> PromptShape:
    chain = Chain()
    tools = body.get("tools")
    if isinstance(tools, list):
        chain.add_blocks("tools", "tool", tools, strip_markers=False)
    key = key_of(body, "systemInstruction")
    instruction = body.get(key) if key else None
    if instruction is not None:
        chain.add(str(key), "system", instruction)
    messages_start = chain.size
    first_user = ""
    contents = body.get("contents")
    for index, content in enumerate(contents if isinstance(contents, list) else []):
        role = str(content.get("role") or "user") if isinstance(content, dict) else ""
        if not first_user and role == "user" and isinstance(content, dict):
            first_user = digest_text(content.get("parts"))
        chain.add(f"contents[{index}]", role, content)
    return automatic_shape(
        chain,
        messages_start=messages_start,
        first_user=first_user,
        ttl_seconds=DEFAULT_TTL_SECONDS,
        settings=digest_text([get(body, "cachedContent"), get(body, "toolConfig")]),
    )


def first_user_message(body: JSONObject) -> object | None:
    contents = body.get("contents")
    for content in contents if isinstance(contents, list) else []:
        if isinstance(content, dict) and (content.get("role") or "user") == "user":
            return content.get("parts")
    return None
