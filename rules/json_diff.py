"""What changed between two JSON documents, as a short list a person can read: the request a client sent
and the one sluice forwarded.

Objects are compared key by key. Arrays are aligned first (difflib's longest matching blocks over each
item's JSON text), so a system block inserted at position 1 reads as one addition, not as every later block
changed. Paths use the after-document's positions (`system[1]`, `messages[3].content[0].cache_control`),
except for removals, which name where the item was.

Pure and stdlib only; never mutates its inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any, Literal

from rules.rewrite import dump_json

Op = Literal["added", "removed", "changed"]

# A value shown in a change is cut to this many characters.
VALUE_LIMIT = 500
# A diff stops after this many changes (a rewrite that touches more is summarized by its count).
MAX_CHANGES = 200


@dataclass(frozen=True, slots=True)
class Change:
    op: Op
    path: str
    before: str | None = None  # compact JSON of the old value, cut to VALUE_LIMIT
    after: str | None = None

    def to_dict(self) -> dict[str, str]:
        """Strings only, so it can be kept in `flow.metadata` and saved with the flow."""
        record = {"op": self.op, "path": self.path}
        if self.before is not None:
            record["before"] = self.before
        if self.after is not None:
            record["after"] = self.after
        return record

    @classmethod
    def from_dict(cls, record: object) -> Change | None:
        """The inverse of `to_dict`; None for anything that is not one (a flow saved by another version)."""
        if not isinstance(record, dict) or record.get("op") not in ("added", "removed", "changed"):
            return None
        path, before, after = record.get("path"), record.get("before"), record.get("after")
        if not isinstance(path, str):
            return None
        return cls(
            record["op"],
            path,
            before if isinstance(before, str) else None,
            after if isinstance(after, str) else None,
        )


def diff_json(before: Any, after: Any, *, limit: int = MAX_CHANGES) -> list[Change]:
    """The changes that turn `before` into `after`, in document order, at most `limit` of them."""
    changes: list[Change] = []
    _diff(before, after, "", changes, limit)
    return changes


def format_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def path_is_within(path: str, ancestor: str) -> bool:
    """`messages[3].content[0]` is within `messages[3]`; `system[10]` is not within `system[1]`."""
    if not ancestor:
        return True
    return path == ancestor or (path.startswith(ancestor) and path[len(ancestor)] in ".[")


def compact(value: Any, limit: int = VALUE_LIMIT) -> str:
    text = _key(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _diff(before: Any, after: Any, path: str, out: list[Change], limit: int) -> None:
    if len(out) >= limit or _same(before, after):
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for key, value in after.items():
            if key not in before:
                _add(out, limit, Change("added", format_path(path, key), after=compact(value)))
            else:
                _diff(before[key], value, format_path(path, key), out, limit)
        for key, value in before.items():
            if key not in after:
                _add(out, limit, Change("removed", format_path(path, key), before=compact(value)))
    elif isinstance(before, list) and isinstance(after, list):
        _diff_lists(before, after, path, out, limit)
    else:
        _add(out, limit, Change("changed", path, compact(before), compact(after)))


def _diff_lists(before: list[Any], after: list[Any], path: str, out: list[Change], limit: int) -> None:
    # The rewrite shares every item it did not change, so an item present in both lists as the very same
    # object is keyed by identity; only the few it rebuilt are serialized to be aligned.
    shared = {id(item) for item in before} & {id(item) for item in after}
    old = [_align_key(item, shared) for item in before]
    new = [_align_key(item, shared) for item in after]
    matcher = SequenceMatcher(None, old, new, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        if tag == "replace" and i2 - i1 == j2 - j1:
            # Same number of items on both sides: the same items, edited (a cache_control taken off a block).
            for offset in range(i2 - i1):
                _diff(before[i1 + offset], after[j1 + offset], format_path(path, j1 + offset), out, limit)
            continue
        _diff_block(before, after, (i1, i2, j1, j2), path, out, limit, shared)


def _diff_block(
    before: list[Any],
    after: list[Any],
    block: tuple[int, int, int, int],
    path: str,
    out: list[Change],
    limit: int,
    shared: set[int],
) -> None:
    """Items that differ between `before[i1:i2]` and `after[j1:j2]`: one that is the same apart from its
    `cache_control` (a client block whose TTL sluice raised next to a block it added) is the same item,
    edited; the rest were removed or added."""
    i1, i2, j1, j2 = block
    old = [_align_key(_without_cache_control(item), shared) for item in before[i1:i2]]
    new = [_align_key(_without_cache_control(item), shared) for item in after[j1:j2]]
    matcher = SequenceMatcher(None, old, new, autojunk=False)
    for tag, a1, a2, b1, b2 in matcher.get_opcodes():
        if tag == "equal":
            for offset in range(a2 - a1):
                index = j1 + b1 + offset
                _diff(before[i1 + a1 + offset], after[index], format_path(path, index), out, limit)
            continue
        for index in range(i1 + a1, i1 + a2):
            _add(out, limit, Change("removed", format_path(path, index), before=compact(before[index])))
        for index in range(j1 + b1, j1 + b2):
            _add(out, limit, Change("added", format_path(path, index), after=compact(after[index])))


def _without_cache_control(item: Any) -> Any:
    if isinstance(item, dict) and "cache_control" in item:
        return {key: value for key, value in item.items() if key != "cache_control"}
    return item


def _add(out: list[Change], limit: int, change: Change) -> None:
    if len(out) < limit:
        out.append(change)


def _key(value: Any) -> str:
    """Compact JSON, numbers exactly as the client wrote them (the rewrite's own serializer)."""
    try:
        return dump_json(value).decode("utf-8")
    except (TypeError, ValueError):
        return repr(value)


def _align_key(value: Any, shared: set[int]) -> str:
    """A key that is equal for equal items: identity for shared objects, else JSON from the C encoder."""
    if id(value) in shared:
        return f"#{id(value)}"
    try:
        return "=" + json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_number_key)
    except (TypeError, ValueError):
        return "=" + repr(value)


def _number_key(value: Any) -> Any:
    text = getattr(value, "text", None)
    if isinstance(text, str):
        return {"$number": text}
    raise TypeError(f"not JSON: {type(value).__name__}")


def _same(before: Any, after: Any) -> bool:
    """Equal scalars of the same JSON type (`1 == True` and `1 == 1.0` in Python, not in JSON). Containers
    are never taken as the same here: their `==` would hide such a change inside them; they are walked —
    unless they are the very same object, which the rewrite shares only where it changed nothing."""
    if before is after:
        return True
    if isinstance(before, dict | list) or isinstance(after, dict | list):
        return False
    return type(before) is type(after) and before == after
