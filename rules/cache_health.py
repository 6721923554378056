"""Prompt-cache health: did a call that continues a conversation read the prefix the previous call cached?

A prompt cache entry is keyed by the exact prompt prefix up to a breakpoint, in prompt order tools → system →
messages (https://docs.claude.com/en/docs/build-with-claude/prompt-caching). A conversation's next turn
re-sends that prefix and adds to it, so it should read it back (`cache_read_input_tokens` > 0). When it
reads nothing, the likely causes are the ones this module can tell from the requests themselves:

- the prefix changed: some block before the cached breakpoint is not byte-identical any more (a timestamp in
  the system prompt, a reordered tool list, a rule that injects text differing per turn); or `tool_choice` /
  `thinking` changed, which invalidates the messages part of the cache;
- the TTL expired: longer since the previous call than the cache lives (5 minutes, or 1 hour with
  `"ttl": "1h"`; OpenAI keeps its automatic cache for about 5 minutes of inactivity, or 24 hours with
  `prompt_cache_retention: "24h"`);
- the credential switched: caches are per organization, so a call carried by another upstream credential
  starts cold;
- no breakpoint is left, or none lies within the 20 blocks the API looks back from a breakpoint.

A prompt is read into a `PromptShape`: one digest per block, chained (each digest covers every block before
it), so two prompts share a prefix exactly as far as their digests agree. `cache_control` markers are left
out of the digests — moving a breakpoint forward is how a conversation is cached, not a change of prefix.
Only 8 bytes of digest per block are kept, so a long conversation costs a few kilobytes of memory.

Pure and stdlib only. Fails open: a body it cannot read gives no shape, and the call is not judged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rules.rewrite import ParsedObject, compact_encoder

if TYPE_CHECKING:
    from rules.providers import WireFormat

JSONObject = dict[str, Any]

TTL_SECONDS = {"5m": 300, "1h": 3600, "24h": 86_400}
DEFAULT_TTL_SECONDS = 300
# "The system automatically checks for cache hits at all previous content block boundaries (up to
# approximately 20 blocks before your explicit breakpoint)."
LOOKBACK_BLOCKS = 20
DIGEST_BYTES = 8

# cache_status values
HIT, WRITE, MISS, NONE = "hit", "write", "miss", "none"


class _Chained:
    """A `chain` of block digests, DIGEST_BYTES a block, each covering every block before it."""

    __slots__ = ()
    chain: bytes

    @property
    def blocks(self) -> int:
        return len(self.chain) // DIGEST_BYTES

    def digest_at(self, position: int) -> bytes:
        return self.chain[position * DIGEST_BYTES : (position + 1) * DIGEST_BYTES]


@dataclass(frozen=True, slots=True)
class PromptShape(_Chained):
    """What the cache sees of one request.

    `chain[i*8:(i+1)*8]` is the digest of blocks 0..i; `labels[i]` names block i (`system[2]`,
    `messages[3].content[0]`); `marked` whether the provider caches only up to the breakpoints the request
    marks (Anthropic's `cache_control`), `breakpoints` the positions of those blocks; `cacheable` is how
    many blocks the provider may cache: up to the last breakpoint, or the whole prompt for automatic caching
    (OpenAI's). `settings` digests what invalidates the messages part without being a block (`tool_choice`,
    `thinking`); `messages_start` is the position of the first message block. `first_user` digests the
    first user message, which names the conversation.
    """

    marked: bool
    chain: bytes
    labels: tuple[str, ...]
    breakpoints: tuple[int, ...]
    cacheable: int
    ttl_seconds: int
    settings: str
    messages_start: int
    first_user: str


def automatic_shape(
    chain: Chain, *, messages_start: int, first_user: str, ttl_seconds: int, settings: str
) -> PromptShape:
    """The shape of a prompt whose provider caches it automatically, whole, with no markers (OpenAI's,
    Gemini's implicit cache)."""
    return PromptShape(
        marked=False,
        chain=b"".join(chain.parts),
        labels=tuple(chain.labels),
        breakpoints=(),
        cacheable=chain.size,
        ttl_seconds=ttl_seconds,
        settings=settings,
        messages_start=messages_start,
        first_user=first_user,
    )


@dataclass(frozen=True, slots=True)
class Turn(_Chained):
    """The last judged call of a conversation, as later calls compare against it (no labels: memory)."""

    chain: bytes  # digests of the cacheable blocks only
    breakpoints: tuple[int, ...]
    ttl_seconds: int
    settings: str
    messages_start: int
    started: float  # epoch seconds
    credential: str
    cached: bool  # the call read or wrote the cache: the next call should read it


@dataclass(frozen=True, slots=True)
class CacheVerdict:
    """`status` is hit, write, miss or none (None: not judged); `note` says why a miss happened."""

    status: str | None
    note: str | None = None


NOT_JUDGED = CacheVerdict(None)


def read_prompt_shape(wire: WireFormat, body: object) -> PromptShape | None:
    """The cacheable shape of a request body (the wire format's `prompt_shape`); None when there is
    nothing to judge. Never raises.

    A block parsed by rules/rewrite.py keeps its digest: one seen before (the very object) is not
    digested again."""
    if wire.prompt_shape is None or not isinstance(body, dict):
        return None
    try:
        return wire.prompt_shape(body)
    except (TypeError, ValueError, RecursionError):
        return None


def conversation_key(
    provider: str, model: str | None, session_id: str | None, client: str | None, shape: PromptShape
) -> str:
    """Names a conversation: Claude Code's session id when sent, else the client; with the model and the
    first user message in both cases.

    Claude Code's sub-agents and side calls (titles, summaries on a smaller model) share its session id but
    not its model or first message; without those two, every alternation between them would read as a miss.
    """
    who = f"session:{session_id}" if session_id else f"client:{client or ''}"
    text = "\x1f".join((provider, model or "", who, shape.first_user))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def affinity_key(session_id: str | None, client: str | None, wire: WireFormat, body: object) -> str | None:
    """Names a conversation for the key pool's routing (state/pool.py): Claude Code's session id
    when sent (its sub-agents and side calls share the session, and so its key), else the client with the
    first user message (without cache markers, which move from turn to turn). None when neither is there:
    such a call belongs to no conversation. Never raises; never holds prompt text, only a digest."""
    if session_id:
        who = f"session:{session_id}"
    else:
        if wire.first_user_message is None or not isinstance(body, dict):
            return None
        try:
            first = wire.first_user_message(body)
        except (TypeError, ValueError, RecursionError):
            return None
        if first is None:
            return None
        who = f"client:{client or ''}\x1f{digest_text(first)}"
    return hashlib.sha256(who.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def first_user_in(items: object) -> object | None:
    """The content of the first `role: user` item of a list of messages (or the items when a string),
    without cache markers (the first turn's breakpoint moves on to later turns); None when there is none."""
    if isinstance(items, str):
        return items
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("role") == "user":
            content = item.get("content")
            return [without_marker(block) for block in content] if isinstance(content, list) else content
    return None


def remember(shape: PromptShape, *, started: float, credential: str, cached: bool) -> Turn:
    """What to keep of a judged call for the next one of its conversation."""
    keep = shape.cacheable
    return Turn(
        chain=shape.chain[: keep * DIGEST_BYTES],
        breakpoints=tuple(b for b in shape.breakpoints if b < keep),
        ttl_seconds=shape.ttl_seconds,
        settings=shape.settings,
        messages_start=shape.messages_start,
        started=started,
        credential=credential,
        cached=cached,
    )


def judge_cache(
    previous: Turn | None,
    shape: PromptShape,
    *,
    started: float,
    credential: str,
    cache_read: int | None,
    cache_write: int | None,
    ok: bool,
) -> CacheVerdict:
    """hit (read something), write (wrote, nothing to read yet), none (neither, nothing expected), or miss:
    the previous call of the conversation read or wrote the cache and this one read nothing, with the likely
    causes in `note`. A call that failed (`ok` False) is not judged."""
    if not ok:
        return NOT_JUDGED
    if (cache_read or 0) > 0:
        return CacheVerdict(HIT)
    if previous is None or not previous.cached:
        return CacheVerdict(WRITE if (cache_write or 0) > 0 else NONE)
    return CacheVerdict(MISS, "; ".join(_causes(previous, shape, started, credential)))


def _causes(previous: Turn, shape: PromptShape, started: float, credential: str) -> list[str]:
    causes = []
    if previous.credential != credential:
        causes.append(f"credential switched ({previous.credential} → {credential})")
    diverged = first_difference(previous, shape)
    if diverged is not None and diverged < shape.blocks:
        causes.append(f"prefix changed at {shape.labels[diverged]}")
    elif diverged is not None:
        causes.append("prefix changed: the prompt is shorter than the cached prefix")
    elif previous.settings != shape.settings and previous.blocks > previous.messages_start:
        causes.append("prefix changed: tool_choice or thinking settings differ")
    elapsed = started - previous.started
    if elapsed > previous.ttl_seconds:
        causes.append(
            f"TTL expired ({_duration(elapsed)} since the previous call; cache TTL "
            f"{_duration(previous.ttl_seconds)})"
        )
    if shape.marked and diverged is None:
        if not shape.breakpoints:
            causes.append("no cache_control breakpoint in this request")
        elif not _reachable(previous.breakpoints, shape.breakpoints):
            causes.append(f"no breakpoint within {LOOKBACK_BLOCKS} blocks after the cached prefix")
    return causes or ["cause unknown: same prefix and credential, within the TTL"]


def first_difference(previous: Turn, shape: PromptShape) -> int | None:
    """The first cached block this prompt does not repeat exactly; None when it repeats them all."""
    for position in range(previous.blocks):
        if position >= shape.blocks:
            return position
        if shape.digest_at(position) != previous.digest_at(position):
            return position
    return None


def _reachable(cached: tuple[int, ...], current: tuple[int, ...]) -> bool:
    """Some breakpoint of this request lies at or within LOOKBACK_BLOCKS after a cached breakpoint."""
    if not cached:
        return True  # nothing known to compare with (automatic caching): do not guess
    return any(0 <= b - p < LOOKBACK_BLOCKS for b in current for p in cached)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        hours, rest = divmod(seconds, 3600)
        return f"{hours}h{rest // 60:02d}m" if rest // 60 else f"{hours}h"
    if seconds >= 60:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"
    return f"{seconds}s"


# --- reading prompts ------------------------------------------------------------------------------------


class Chain:
    """The digests of a prompt's blocks, in prompt order, each covering every block before it."""

    def __init__(self) -> None:
        self.digest = b""
        self.parts: list[bytes] = []
        self.labels: list[str] = []

    def add(self, label: str, role: str, block: object, *, strip_markers: bool = False) -> None:
        self._fold(label, _digest_of(role, block, strip_markers))

    def add_blocks(self, name: str, role: str, blocks: list[Any], *, strip_markers: bool) -> None:
        for index, block in enumerate(blocks):
            self._fold(f"{name}[{index}]", _digest_of(role, block, strip_markers))

    def _fold(self, label: str, block_digest: bytes) -> None:
        # Chained: each digest covers every block before it.
        self.digest = hashlib.sha256(self.digest + block_digest).digest()[:DIGEST_BYTES]
        self.parts.append(self.digest)
        self.labels.append(label)

    @property
    def size(self) -> int:
        return len(self.labels)


def _digest_of(role: str, block: object, strip_markers: bool) -> bytes:
    """A block's digest (without its markers, if asked), kept on the parsed object: an agent's tools,
    system blocks and earlier messages come back as the very same objects call after call (MemberMemo in
    rules/rewrite.py), and are digested once."""
    if type(block) is not ParsedObject:
        return _block_digest(role, without_marker(block) if strip_markers else block)
    kept: tuple[str, bool, bytes] | None = getattr(block, "digest", None)
    if kept is not None and kept[0] == role and kept[1] == strip_markers:
        return kept[2]
    digest = _block_digest(role, without_marker(block) if strip_markers else block)
    block.digest = (role, strip_markers, digest)
    return digest


def _block_digest(role: str, block: object) -> bytes:
    text = role + "\x1f" + _BLOCK_ENCODER(block)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


def without_marker(block: object) -> object:
    """A block as the cache keys it: without its `cache_control`, nested content blocks likewise.

    The very same object when it carries no marker at any depth (most blocks): nothing is copied.
    """
    if not isinstance(block, dict):
        return block
    stripped = block
    if "cache_control" in block:
        stripped = {key: value for key, value in block.items() if key != "cache_control"}
    content = block.get("content")
    if isinstance(content, list):
        children = _children_without_marker(content)
        if children is not content:
            stripped = {**stripped, "content": children}
    source = block.get("source")
    if isinstance(source, dict) and isinstance(source.get("content"), list):
        children = _children_without_marker(source["content"])
        if children is not source["content"]:
            stripped = {**stripped, "source": {**source, "content": children}}
    return stripped


def _children_without_marker(children: list[Any]) -> list[Any]:
    stripped = [without_marker(child) for child in children]
    return children if all(new is old for new, old in zip(stripped, children, strict=True)) else stripped


def digest_text(value: object) -> str:
    """A short digest of any JSON value (a first user message, the settings that invalidate a cache)."""
    text = _TEXT_ENCODER(value)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _number_text(value: object) -> object:
    """A number kept as its exact text (rules/rewrite.py's RawNumber) hashes as that text."""
    text = getattr(value, "text", None)
    if isinstance(text, str):
        return text
    raise TypeError(f"not JSON: {type(value).__name__}")


_BLOCK_ENCODER = compact_encoder(_number_text, allow_nan=True)
_TEXT_ENCODER = compact_encoder(str, allow_nan=True)
