"""What a new configuration's request rules would do to requests already seen, without sending anything.

`replay_request` runs the same rules the proxy runs (rules/rewrite.py) over one saved request body and
compares the result with the body as it was saved: bytes added, system blocks injected, cache breakpoints
before and after the cap, and whether the prompt-cache prefix would change (rules/cache_health.py's digests:
the first block, in prompt order, that differs, and whether it lies inside the prefix the saved request
cached). An operator sees that a new system block busts every cached conversation before deploying it.

The saved body is what went upstream: under the configuration the proxy ran with then (or none, for a
bare mitmdump). Blocks that configuration injected are already in it and are not injected twice, so the
comparison shows what the new configuration adds or changes on top; a block the new configuration no longer
has is not taken out (the client's own bytes are not kept on the flow).

Pure and stdlib only. Fails open, as the rewrite does: a body the rules cannot read is reported with the
rewrite's note and counted as unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rules.cache_health import PromptShape, first_difference, read_prompt_shape, remember
from rules.rewrite import RuleContext, apply_request_rules

SYSTEM_BLOCK_PREFIX = "system_block:"

# prefix verdicts
UNCHANGED, CHANGED, NOTHING_CACHED, NOT_JUDGED = "unchanged", "changed", "nothing cached", "not judged"


@dataclass(frozen=True, slots=True)
class ReplayedRequest:
    """One saved request under the new rules. `prefix` is one of unchanged, changed (the cached prefix
    would be written anew: `prefix_note` says where), nothing cached, not judged."""

    flow_id: str
    host: str
    path: str
    provider: str
    api: str
    client: str | None
    model: str | None
    bytes_before: int
    bytes_after: int
    applied: list[str] = field(default_factory=list)
    blocks_injected: list[str] = field(default_factory=list)
    breakpoints_before: int | None = None
    breakpoints_after: int | None = None
    prefix: str = NOT_JUDGED
    prefix_note: str | None = None
    note: str | None = None

    @property
    def bytes_added(self) -> int:
        return self.bytes_after - self.bytes_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_added": self.bytes_added}


def replay_request(flow_id: str, path: str, raw: bytes, context: RuleContext) -> ReplayedRequest:
    """The new rules (`context.rules`) over one saved request body. Never raises."""
    result = apply_request_rules(raw, context)
    after = result.body if result.body is not None else raw
    report = ReplayedRequest(
        flow_id=flow_id,
        host=context.host,
        path=path,
        provider=context.wire.provider.name,
        api=context.wire.name,
        client=context.client,
        model=result.model,
        bytes_before=len(raw),
        bytes_after=len(after),
        applied=list(result.applied),
        blocks_injected=[
            name.removeprefix(SYSTEM_BLOCK_PREFIX)
            for name in result.applied
            if name.startswith(SYSTEM_BLOCK_PREFIX)
        ],
        note=result.note,
    )
    before_body, after_body = result.parsed, result.rewritten
    if before_body is None or after_body is None:
        return report
    breakpoints: tuple[int | None, int | None] = (None, None)
    count = context.wire.count_cache_marks
    if count is not None:
        breakpoints = (count(before_body), count(after_body))
    prefix, prefix_note = compare_prefix(
        read_prompt_shape(context.wire, before_body),
        read_prompt_shape(context.wire, after_body),
        model_before=_model(before_body),
        model_after=_model(after_body),
    )
    return _with(report, breakpoints, prefix, prefix_note)


def _with(
    report: ReplayedRequest, breakpoints: tuple[int | None, int | None], prefix: str, note: str | None
) -> ReplayedRequest:
    values = asdict(report)
    values.update(breakpoints_before=breakpoints[0], breakpoints_after=breakpoints[1], prefix=prefix)
    values["prefix_note"] = note
    return ReplayedRequest(**values)


def _model(body: dict[str, Any]) -> str | None:
    model = body.get("model")
    return model if isinstance(model, str) else None


def compare_prefix(
    before: PromptShape | None,
    after: PromptShape | None,
    *,
    model_before: str | None,
    model_after: str | None,
) -> tuple[str, str | None]:
    """Whether the prefix the saved request cached would still be read back under the new rules.

    A cache entry holds the exact prompt up to a breakpoint, per model (rules/cache_health.py): the prefix
    survives only when every block up to the saved request's cacheable end is the same, in the same
    position, with the same model and the same settings that invalidate the messages part.
    """
    if before is None or after is None:
        return NOT_JUDGED, None
    if before.cacheable == 0:
        return NOTHING_CACHED, "the saved request cached nothing (no cache_control breakpoint)"
    if model_before != model_after:
        return CHANGED, f"model changes from {model_before} to {model_after}: caches are kept per model"
    cached = remember(before, started=0.0, credential="", cached=True)  # what a cache entry holds of it
    position = first_difference(cached, after)
    if position is not None:
        label = after.labels[position] if position < after.blocks else before.labels[position]
        lost = f"{cached.blocks - position} of {cached.blocks} cached blocks written anew"
        return CHANGED, f"prefix changes at {label}: {lost}"
    if before.settings != after.settings and before.messages_start < before.cacheable:
        cached_messages = before.cacheable - before.messages_start
        return (
            CHANGED,
            f"tool_choice or thinking changes: {cached_messages} cached message blocks written anew",
        )
    return UNCHANGED, None
