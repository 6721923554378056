"""OpenAI's prompt cache as rules/cache_health.py judges it: automatic, the whole prompt, no markers.

Prompt order is tools, then (Responses) `instructions`, then each message or input item as one block. The
cache is kept for about 5 minutes of inactivity, or 24 hours with `prompt_cache_retention: "24h"`
(https://platform.openai.com/docs/guides/prompt-caching), keyed by the prompt alone.
"""

from __future__ import annotations

from rules.cache_health import (
    DEFAULT_TTL_SECONDS,
    TTL_SECONDS,
    Chain,
    PromptShape,
    automatic_shape,
    digest_text,
    first_user_in,
)
from rules.rewrite import JSONObject


def chat_prompt_shape(body: JSONObject) -> PromptShape:
    return _prompt_shape(body, "messages", instructions=False)


def responses_prompt_shape(body: JSONObject) -> PromptShape:
    return _prompt_shape(body, "input", instructions=True)


def chat_first_user_message(body: JSONObject) -> object | None:
    return first_user_in(body.get("messages"))


def responses_first_user_message(body: JSONObject) -> object | None:
    return first_user_in(body.get("input"))


def _prompt_shape(body: JSONObject, name: str, *, instructions: bool) -> PromptShape:
    chain = Chain()
    tools = body.get("tools")
    if isinstance(tools, list):
        chain.add_blocks("tools", "tool", tools, strip_markers=False)
    first_user = ""
    if instructions and isinstance(body.get("instructions"), str):
        chain.add("instructions", "system", body["instructions"])
    messages_start = chain.size
    items = body.get(name)
    if isinstance(items, str):
        chain.add(name, "user", items)
        first_user = digest_text(items)
    for index, item in enumerate(items if isinstance(items, list) else []):
        role = str(item.get("role", item.get("type", ""))) if isinstance(item, dict) else ""
        if not first_user and role == "user" and isinstance(item, dict):
            first_user = digest_text(item.get("content"))
        chain.add(f"{name}[{index}]", role, item)
    retention = body.get("prompt_cache_retention")
    return automatic_shape(
        chain,
        messages_start=messages_start,
        first_user=first_user,
        ttl_seconds=TTL_SECONDS["24h"] if retention == "24h" else DEFAULT_TTL_SECONDS,
        settings="",  # OpenAI's automatic cache is keyed by the prompt alone
    )
