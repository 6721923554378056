"""Anthropic's prompt cache as rules/cache_health.py judges it: what a Messages request caches.

Prompt order is tools -> system -> messages, one block per tool, system block and message content block;
the cache holds the prefix up to the last `cache_control` breakpoint
(https://docs.claude.com/en/docs/build-with-claude/prompt-caching). Markers are left out of the digests:
moving a breakpoint forward is how a conversation is cached, not a change of prefix.
"""

from __future__ import annotations

from rules.cache_health import (
    DEFAULT_TTL_SECONDS,
    TTL_SECONDS,
    Chain,
    PromptShape,
    digest_text,
    first_user_in,
    without_marker,
)
from rules.providers.anthropic.cache_control import find_cache_breakpoints
from rules.rewrite import JSONObject


def prompt_shape(body: JSONObject) -> PromptShape:
    chain = Chain()
    positions: dict[tuple[str | int, ...], int] = {}
    tools = body.get("tools")
    if isinstance(tools, list):
        positions.update((("tools", index), chain.size + index) for index in range(len(tools)))
        chain.add_blocks("tools", "tool", tools, strip_markers=True)
    system = body.get("system")
    if isinstance(system, str):
        chain.add("system", "system", system)
    elif isinstance(system, list):
        positions.update((("system", index), chain.size + index) for index in range(len(system)))
        chain.add_blocks("system", "system", system, strip_markers=True)
    messages_start = chain.size
    first_user = ""
    messages = body.get("messages")
    for index, message in enumerate(messages if isinstance(messages, list) else []):
        if not isinstance(message, dict):
            chain.add(f"messages[{index}]", "", message)
            continue
        role = str(message.get("role"))
        content = message.get("content")
        if not first_user and role == "user":
            # Without markers: the first turn's breakpoint moves on to later turns.
            first_user = digest_text(
                [without_marker(block) for block in content] if isinstance(content, list) else content
            )
        if isinstance(content, list):
            for position, block in enumerate(content):
                positions[("messages", index, "content", position)] = chain.size
                chain.add(f"messages[{index}].content[{position}]", role, block, strip_markers=True)
        else:
            chain.add(f"messages[{index}].content", role, content)
    breakpoints: list[int] = []
    ttls: list[int] = []
    for point in find_cache_breakpoints(body):
        # A nested block's marker caches the top-level block that holds it; the request-level marker
        # (automatic caching) the last block.
        at = positions.get(point.path[:4] if point.path[:1] == ("messages",) else point.path[:2])
        if not point.path:
            at = chain.size - 1
        if at is not None and at >= 0:
            breakpoints.append(at)
            ttls.append(TTL_SECONDS.get(point.ttl, DEFAULT_TTL_SECONDS))
    breakpoints.sort()
    settings = digest_text([body.get("tool_choice"), body.get("thinking")])
    return PromptShape(
        marked=True,
        chain=b"".join(chain.parts),
        labels=tuple(chain.labels),
        breakpoints=tuple(breakpoints),
        cacheable=breakpoints[-1] + 1 if breakpoints else 0,
        ttl_seconds=max(ttls, default=DEFAULT_TTL_SECONDS),
        settings=settings,
        messages_start=messages_start,
        first_user=first_user,
    )


def first_user_message(body: JSONObject) -> object | None:
    return first_user_in(body.get("messages"))
