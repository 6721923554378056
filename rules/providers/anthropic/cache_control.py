"""Anthropic prompt-cache breakpoints: find them, cap their number, order their TTLs as the API requires.

A breakpoint is a `cache_control` object on a tool, a system block or a content block (nested blocks count:
`tool_result` content, `search_result` content, a `document` whose source is `content`), or the request's
top-level `cache_control` (automatic caching, which marks the last cacheable block). Anthropic accepts at most
4 per request, counted across tools, system and messages:
"A maximum of 4 blocks with cache_control may be provided. Found 5." (HTTP 400).
https://docs.claude.com/en/docs/build-with-claude/prompt-caching

Prompt order is tools -> system -> messages; inside a block, nested blocks end before the block that holds
them, so they come first. The top-level marker sits on the last cacheable block: it is always last.

Both rules here are pure: they take a request body (a dict parsed from JSON) and return a new one, or the
very same object when nothing needs to change. Neither ever mutates its input.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

JSONObject = dict[str, Any]
# Where a block sits in the body: ("system", 2), ("messages", 5, "content", 0, "content", 1);
# () is the request's own top-level `cache_control`.
BlockPath = tuple[str | int, ...]
Section = Literal["tools", "system", "messages", "request"]

ANTHROPIC_MAX_BREAKPOINTS = 4


@dataclass(frozen=True, slots=True)
class Breakpoint:
    path: BlockPath
    section: Section
    ttl: str  # "5m" or "1h"; a marker without `ttl` is 5m, the API default
    ttl_explicit: bool  # whether the marker is a dict we may rewrite (it carries the TTL or can)


def find_cache_breakpoints(body: JSONObject) -> list[Breakpoint]:
    """Every breakpoint of an Anthropic Messages (or count_tokens) body, in prompt order.

    Shapes the API would reject (a `system` that is neither string nor list, a block that is not an object)
    are skipped rather than guessed at: the provider answers those with its own 400.
    """
    found: list[Breakpoint] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        for index, tool in enumerate(tools):
            _note_marker(tool, ("tools", index), "tools", found)
    system = body.get("system")
    if isinstance(system, list):
        for index, block in enumerate(system):
            _walk_block(block, ("system", index), "system", found)
    messages = body.get("messages")
    if isinstance(messages, list):
        for index, message in enumerate(messages):
            if isinstance(message, dict) and isinstance(message.get("content"), list):
                for position, block in enumerate(message["content"]):
                    _walk_block(block, ("messages", index, "content", position), "messages", found)
    _note_marker(body, (), "request", found)
    return found


def _walk_block(block: object, path: BlockPath, section: Section, found: list[Breakpoint]) -> None:
    if not isinstance(block, dict):
        return
    # Nested content blocks: tool_result / search_result `content`, a document's `source.content`.
    # A tool_use `input` is the model's data, never blocks: a key named cache_control there is not a marker.
    nested = block.get("content")
    if isinstance(nested, list):
        for index, child in enumerate(nested):
            _walk_block(child, (*path, "content", index), section, found)
    source = block.get("source")
    if isinstance(source, dict) and isinstance(source.get("content"), list):
        for index, child in enumerate(source["content"]):
            _walk_block(child, (*path, "source", "content", index), section, found)
    _note_marker(block, path, section, found)


def _note_marker(holder: object, path: BlockPath, section: Section, found: list[Breakpoint]) -> None:
    if not isinstance(holder, dict):
        return
    marker = holder.get("cache_control")
    if marker is None:  # absent, or an explicit null: no breakpoint
        return
    if isinstance(marker, dict):
        found.append(Breakpoint(path, section, "1h" if marker.get("ttl") == "1h" else "5m", True))
    else:
        found.append(Breakpoint(path, section, "5m", False))


def count_cache_breakpoints(body: JSONObject) -> int:
    return len(find_cache_breakpoints(body))


def mark_cache(
    body: JSONObject, limit: int, sluice_paths: Sequence[BlockPath]
) -> tuple[JSONObject, list[str]]:
    """Both rules, as the rewrite applies them: the cap (`cap_cache_control`), then the TTL order
    (`fix_ttl_order`); returns the body and what was done (`cache_control_cap:5->4`, `cache_ttl_order`).
    Fails open as each rule does: the very same body when neither has anything to do."""
    # One walk for both rules: capping removes markers only, so the paths of the rest stay valid.
    done: list[str] = []
    found = find_cache_breakpoints(body)
    over = breakpoints_over_cap(found, limit, sluice_paths)
    if over:
        body = without_markers(body, over)
        done.append(f"cache_control_cap:{len(found)}->{len(found) - len(over)}")
        dropped = {bp.path for bp in over}
        found = [bp for bp in found if bp.path not in dropped]
    ordered = fix_ttl_order(body, found)
    if ordered is not body:
        done.append("cache_ttl_order")
    return ordered, done


def cap_cache_control(
    body: JSONObject,
    limit: int = ANTHROPIC_MAX_BREAKPOINTS,
    sluice_paths: Collection[BlockPath] = (),
) -> JSONObject:
    """Remove `cache_control` markers until at most `limit` remain.

    Fails open: a body at or under the limit is returned as the very same object, and only markers are ever
    removed (never a block, never text), so the request still means the same thing, only cached differently.

    `sluice_paths` names the blocks sluice itself injected (e.g. `("system", 3)`); the marker is positional,
    so nothing sluice-specific ever appears on the wire. Drop order, least valuable first:

    1. sluice's own injected blocks, earliest first: the operator's cache hint yields to the client's;
    2. tools breakpoints other than the last tools one, then system breakpoints other than the last system
       one: a later breakpoint in the same section caches the same rarely-changing prefix and more;
    3. message breakpoints, earliest first: the latest covers the longest prefix, and the API looks back
       about 20 blocks from each breakpoint for an earlier cache entry, so old turns add little;
    4. the last tools breakpoint (the system breakpoint after it covers it too), then the last system one.

    The last breakpoint in prompt order is never dropped, since it covers the longest prefix, unless
    `limit` is 0, which the operator sets to turn caching off: then every marker goes.
    """
    return without_markers(body, breakpoints_over_cap(find_cache_breakpoints(body), limit, sluice_paths))


def breakpoints_over_cap(
    breakpoints: list[Breakpoint],
    limit: int = ANTHROPIC_MAX_BREAKPOINTS,
    sluice_paths: Collection[BlockPath] = (),
) -> list[Breakpoint]:
    """The breakpoints `cap_cache_control` removes, in the order it gives them up."""
    excess = len(breakpoints) - max(limit, 0)
    if excess <= 0:
        return []
    return drop_order(breakpoints, sluice_paths, keep_last=limit > 0)[:excess]


def without_markers(body: JSONObject, breakpoints: Collection[Breakpoint]) -> JSONObject:
    """`body` without the markers of `breakpoints` (found in it); the very same object when there are none."""
    result = body
    for breakpoint in breakpoints:
        result = _update_at(result, breakpoint.path, _without_marker)
    return result


def drop_order(
    breakpoints: list[Breakpoint], sluice_paths: Collection[BlockPath] = (), *, keep_last: bool = True
) -> list[Breakpoint]:
    """Breakpoints in the order `cap_cache_control` gives them up (see there for the reasons)."""
    if not breakpoints:
        return []
    candidates = breakpoints[:-1] if keep_last else list(breakpoints)
    ours = [bp for bp in candidates if bp.path in sluice_paths]
    theirs = [bp for bp in candidates if bp.path not in sluice_paths]
    tools = [bp for bp in theirs if bp.section == "tools"]
    system = [bp for bp in theirs if bp.section == "system"]
    messages = [bp for bp in theirs if bp.section == "messages"]
    request = [bp for bp in theirs if bp.section == "request"]  # only when keep_last is False
    return ours + tools[:-1] + system[:-1] + messages + tools[-1:] + system[-1:] + request


def fix_ttl_order(body: JSONObject, breakpoints: list[Breakpoint] | None = None) -> JSONObject:
    """Make every 5m breakpoint that precedes a 1h breakpoint a 1h one.

    The API rejects a 1h breakpoint after a 5m one in prompt order. Upgrading the earlier markers, rather
    than downgrading the later 1h one, is the choice here because:
    - it costs nothing more to write: Anthropic bills every token up to the last 1h breakpoint at the 1h
      write rate whatever the markers before it say (prompt-caching docs, "Mixing different TTLs");
    - it keeps what the client (or operator) explicitly asked for: a 1h marker is deliberate, and turning it
      into 5m would quietly expire a long prefix that somebody wanted kept for an hour.

    Fails open: a body already in a valid order is returned as the very same object; a marker that is not
    an object (which the API rejects anyway) is left alone. `breakpoints`, when given, must be
    `find_cache_breakpoints(body)`.
    """
    if breakpoints is None:
        breakpoints = find_cache_breakpoints(body)
    last_long = max((i for i, bp in enumerate(breakpoints) if bp.ttl == "1h"), default=0)
    result = body
    for breakpoint in breakpoints[:last_long]:
        if breakpoint.ttl == "5m" and breakpoint.ttl_explicit:
            result = _update_at(result, breakpoint.path, _with_long_ttl)
    return result


def _without_marker(holder: JSONObject) -> JSONObject:
    return {key: value for key, value in holder.items() if key != "cache_control"}


def _with_long_ttl(holder: JSONObject) -> JSONObject:
    # Key order kept: `ttl` replaces itself in place, or is added after `type`.
    return {**holder, "cache_control": {**holder["cache_control"], "ttl": "1h"}}


def _update_at(container: Any, path: BlockPath, change: Callable[[JSONObject], JSONObject]) -> Any:
    """A copy of `container` with `change` applied to the object at `path`; only the path is copied."""
    if not path:
        return change(container)
    key, rest = path[0], path[1:]
    if isinstance(container, list) and isinstance(key, int):
        copy = list(container)
        copy[key] = _update_at(container[key], rest, change)
        return copy
    if isinstance(container, dict) and isinstance(key, str):
        return {**container, key: _update_at(container[key], rest, change)}
    raise KeyError(path)  # find_cache_breakpoints only yields paths that exist
