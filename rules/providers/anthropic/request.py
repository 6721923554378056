"""Anthropic Messages (and count_tokens) request bodies: the hooks of the request rules (rules/rewrite.py).

Each hook takes a parsed body and returns a new one, or the very same object when it has nothing to do;
none mutates its input, and each fails open: a shape it does not know is returned unchanged.
https://docs.claude.com/en/api/messages
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rules.providers.anthropic.cache_control import BlockPath
from rules.rewrite import JSONObject, ParsedObject, new_blocks

if TYPE_CHECKING:
    from rules.config import SystemBlock

# Claude Code's attribution block at system[0]; Anthropic's API recognises and strips it by position.
BILLING_BLOCK_PREFIX = "x-anthropic-billing-header:"


def strip_billing_block(body: JSONObject) -> JSONObject:
    """Remove Claude Code's attribution text block from system[0]; fails open.

    Only Anthropic's own API knows to drop that block; another upstream would feed it to the model as
    prompt text. Only position 0 is looked at (that is where the client puts it and the API looks).
    When it was the only block, `system` is removed rather than left as an empty list.
    """
    system = body.get("system")
    if not isinstance(system, list) or not system:
        return body
    first = system[0]
    if not (
        isinstance(first, dict)
        and first.get("type") == "text"
        and isinstance(first.get("text"), str)
        and first["text"].lower().startswith(BILLING_BLOCK_PREFIX)
    ):
        return body
    if len(system) == 1:
        return {key: value for key, value in body.items() if key != "system"}
    return {**body, "system": system[1:]}


def inject_system(
    body: JSONObject, blocks: Sequence[SystemBlock]
) -> tuple[JSONObject, list[str], list[BlockPath]]:
    """Text blocks appended to the `system` array, never before system[0] (Claude Code's attribution block
    lives there and the API finds it by position); also returns the names added and the new blocks' paths.

    A string `system` becomes one text block followed by the new ones, and only when something is
    injected. A block with `cache` carries `cache_control` (`ttl` written only for "1h"; 5m is the API
    default). A `system` neither string nor list is left alone.
    """
    system = body.get("system")
    existing: list[Any]
    if system is None:
        existing = []
    elif isinstance(system, str):
        # An empty string is no prompt at all; a text block may not be empty, so it is not kept as one.
        existing = [{"type": "text", "text": system}] if system else []
    elif isinstance(system, list):
        existing = system
    else:
        return body, [], []
    present = {
        item["text"]
        for item in existing
        if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str)
    }
    added = new_blocks(blocks, present)
    if not added:
        return body, [], []
    new_system = [*existing, *(_system_block(block) for block in added)]
    paths: list[BlockPath] = [("system", index) for index in range(len(existing), len(new_system))]
    return {**body, "system": new_system}, [block.name for block in added], paths


def _system_block(block: SystemBlock) -> JSONObject:
    """The operator's block as the API takes it: one object per configured block, shared by every call
    (nothing mutates a body), so what a reader derives from it (its prompt-cache digest) is kept."""
    key = (block.text, block.cache)
    found = _SYSTEM_BLOCKS.get(key)
    if found is None:
        # https://docs.claude.com/en/api/messages (system: TextBlockParam[]; cache_control.ttl "5m" | "1h")
        found = ParsedObject(type="text", text=block.text)
        if block.cache == "1h":
            found["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
        elif block.cache == "5m":
            found["cache_control"] = {"type": "ephemeral"}
        if len(_SYSTEM_BLOCKS) < _SYSTEM_BLOCKS_MAX:  # configurations are small; reloads add a few
            _SYSTEM_BLOCKS[key] = found
    return found


_SYSTEM_BLOCKS: dict[tuple[str, str | None], JSONObject] = {}
_SYSTEM_BLOCKS_MAX = 1024


def stamp_user(body: JSONObject, user_id: str) -> JSONObject:
    """`metadata.user_id`, when absent or null (Claude Code puts a JSON string with its session there: kept
    as is; any other value, even "", is the client's). A `metadata` that is not an object is left alone."""
    metadata = body.get("metadata")
    if metadata is None:
        return {**body, "metadata": {"user_id": user_id}}
    if isinstance(metadata, dict) and metadata.get("user_id") is None:
        return {**body, "metadata": {**metadata, "user_id": user_id}}
    return body


def backfill_max_tokens(body: JSONObject, default: int | None) -> JSONObject:
    """Anthropic Messages requires `max_tokens`; add `default` when it is absent or null; fails open.

    A present value, even one the API would reject, is the client's and stays.
    """
    if default is None or body.get("max_tokens") is not None:
        return body
    return {**body, "max_tokens": default}
