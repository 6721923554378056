"""What the fake provider keeps per API key: a prompt cache and a rate-limit state. Both opt-in, no I/O.

A real provider keeps prompt caches per organisation (so per key, for a pool of keys from different
organisations) and counts rate limits per key. tests/fake_provider.py consults these when they are set
(`fake.prompt_cache = PromptCache(...)`, `fake.key_limits = KeyLimits(...)`), so a test or a benchmark can
see what routing a conversation from key to key costs. Token counts come from the text's length, never from
a tokenizer, so they are the same on every run. Each model takes its clock, so tests drive time by hand.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.fake_provider import Usage

Clock = Callable[[], float]

BYTES_PER_TOKEN = 4
# Anthropic looks for an earlier cached prefix at most about 20 content blocks before each breakpoint
# (https://docs.anthropic.com/en/docs/build-with-claude/prompt-caching, "cache breakpoints").
LOOKBACK_BLOCKS = 20
TTL_S = {"5m": 300.0, "1h": 3600.0}
# The smallest prefix the API caches for Sonnet and Opus models; a shorter one is processed uncached.
MIN_CACHEABLE_TOKENS = 1024


def tokens_of(text: bytes) -> int:
    """The fake's token count for `text`: its UTF-8 length over four, rounded up."""
    return math.ceil(len(text) / BYTES_PER_TOKEN)


@dataclass(frozen=True)
class _Block:
    """One content block of the prompt, in the API's cache order (tools, system, messages)."""

    digest: bytes  # of the whole prefix up to and including this block
    tokens: int  # of the whole prefix up to and including this block
    ttl: str | None  # "5m" / "1h" when the block carries a cache_control breakpoint


def _without_cache_control(block: Any) -> Any:
    # Moving a breakpoint does not change the cached text: the marker is no part of the prefix.
    return {k: v for k, v in block.items() if k != "cache_control"} if isinstance(block, dict) else block


def _breakpoint_ttl(block: Any) -> str | None:
    marker = block.get("cache_control") if isinstance(block, dict) else None
    if not isinstance(marker, dict):
        return None
    return "1h" if marker.get("ttl") == "1h" else "5m"


def _raw_blocks(payload: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(where, block) in prompt order: each tool, each system block, each block of each message."""
    for tool in payload.get("tools") or []:
        yield "tool", tool
    system = payload.get("system")
    for block in [system] if isinstance(system, str) else system or []:
        yield "system", block
    for message in payload.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        role = str(message.get("role"))
        for block in [content] if isinstance(content, str) else content or []:
            yield role, block


def prompt_blocks(payload: dict[str, Any]) -> list[_Block]:
    """The prompt as a chain of prefixes: each block's digest covers the model and everything before it."""
    digest = hashlib.sha256(str(payload.get("model")).encode()).digest()
    tokens = 0
    blocks = []
    for where, block in _raw_blocks(payload):
        text = json.dumps(_without_cache_control(block), sort_keys=True, ensure_ascii=False).encode()
        digest = hashlib.sha256(digest + where.encode() + b"\0" + text).digest()
        tokens += tokens_of(text)
        blocks.append(_Block(digest, tokens, _breakpoint_ttl(block)))
    return blocks


class PromptCache:
    """Anthropic's prompt cache, one per key: which prefixes a key has cached, until when.

    A request reads the longest cached prefix that ends at a breakpoint or up to LOOKBACK_BLOCKS blocks
    before one (`cache_read_input_tokens`); the prefix up to its last breakpoint, past what was read, is
    written (`cache_creation_input_tokens`, split by TTL); the rest is plain `input_tokens`. Every breakpoint
    becomes an entry of the key's cache for its TTL, and a read refreshes the entry it read. Prefixes under
    `min_tokens` are never cached.
    """

    def __init__(self, clock: Clock = time.monotonic, *, min_tokens: int = MIN_CACHEABLE_TOKENS) -> None:
        self.clock = clock
        self.min_tokens = min_tokens
        self._lock = threading.Lock()
        # (key, prefix digest) -> (expires at, ttl)
        self._entries: dict[tuple[str, bytes], tuple[float, str]] = {}

    def usage(self, key: str, payload: dict[str, Any], output_tokens: int) -> Usage:
        """What a Messages request with `payload` costs on `key` now, and the cache it leaves behind."""
        blocks = prompt_blocks(payload)
        total = blocks[-1].tokens if blocks else 0
        marks = [i for i, b in enumerate(blocks) if b.ttl and b.tokens >= self.min_tokens]
        with self._lock:
            now = self.clock()
            self._forget_expired(now)
            hit = self._longest_hit(key, blocks, marks, now)
            read = blocks[hit].tokens if hit is not None else 0
            write_5m = write_1h = 0
            if marks and (hit is None or marks[-1] > hit):
                last_1h = max((i for i in marks if blocks[i].ttl == "1h"), default=None)
                write_1h = max(0, blocks[last_1h].tokens - read) if last_1h is not None else 0
                write_5m = blocks[marks[-1]].tokens - read - write_1h
            if hit is not None:
                ttl = self._entries[(key, blocks[hit].digest)][1]
                self._entries[(key, blocks[hit].digest)] = (now + TTL_S[ttl], ttl)
            for i in marks:
                ttl = blocks[i].ttl or "5m"
                self._entries[(key, blocks[i].digest)] = (now + TTL_S[ttl], ttl)
        return Usage(
            input_tokens=total - read - write_5m - write_1h,
            cache_read_tokens=read,
            cache_write_5m_tokens=write_5m,
            cache_write_1h_tokens=write_1h,
            output_tokens=output_tokens,
        )

    def entries(self, key: str) -> int:
        """How many live prefixes `key` has cached."""
        with self._lock:
            now = self.clock()
            return sum(1 for (k, _), (until, _) in self._entries.items() if k == key and until > now)

    def _longest_hit(self, key: str, blocks: list[_Block], marks: list[int], now: float) -> int | None:
        for mark in reversed(marks):
            for i in range(mark, max(-1, mark - LOOKBACK_BLOCKS), -1):
                entry = self._entries.get((key, blocks[i].digest))
                if entry is not None and entry[0] > now:
                    return i
        return None

    def _forget_expired(self, now: float) -> None:
        expired = [name for name, (until, _) in self._entries.items() if until <= now]
        for name in expired:
            del self._entries[name]


@dataclass
class _KeyState:
    next_limit_at: int  # the request count at which this key next hits its limit
    requests: int = 0  # asked of it while not limited, since the start
    limited_until: float = 0.0
    tokens_used: int = 0  # since the start: what the unified utilisations count
    # (when, input tokens counted, output tokens) of each request served in the last minute
    window: deque[tuple[float, int, int]] = field(default_factory=deque)


class KeyLimits:
    """Rate limits per key: headers that show each key's own load and, with `churn`, scheduled 429s.

    Every key's rate-limit headers count what that key served: in the last minute, requests, input tokens
    against `tokens_per_minute`, output tokens against a fifth of it, both together (the `tokens` family);
    since the start, tokens against `tokens_per_5h` (`anthropic-ratelimit-unified-5h-utilization`) and
    twenty times that (`-7d-utilization`). So a pool can tell which key has the most headroom. Input tokens
    counted are the ones the API counts against input-token limits: uncached input and cache writes (cache
    reads are free).

    With `churn=True` each key hits its limit on a schedule drawn from `seed` (the same for every run):
    after `every` requests (a random count within the range) the key answers 429 `rate_limit_error` with a
    `retry-after` for `lasting` seconds (a random span within the range), then recovers.
    """

    def __init__(
        self,
        clock: Clock = time.monotonic,
        *,
        churn: bool = False,
        seed: int = 0,
        every: tuple[int, int] = (40, 120),
        lasting: tuple[float, float] = (2.0, 5.0),
        tokens_per_minute: int = 2_000_000,
        requests_per_minute: int = 4_000,
        tokens_per_5h: int = 100_000_000,
    ) -> None:
        self.clock = clock
        self.churn = churn
        self.seed = seed
        self.every = every
        self.lasting = lasting
        self.tokens_per_minute = tokens_per_minute
        self.requests_per_minute = requests_per_minute
        self.tokens_per_5h = tokens_per_5h
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyState] = {}
        self._schedules: dict[str, random.Random] = {}
        self.refused: dict[str, int] = {}  # key -> 429s answered

    def keys(self) -> set[str]:
        """Every key a request has carried so far."""
        with self._lock:
            return set(self._keys)

    def admit(self, key: str) -> float | None:
        """Whether `key` may serve a request now: None if so, else the seconds until it recovers.

        Only requests the key is asked for while it is not limited count towards its next limit."""
        with self._lock:
            state = self._state(key)
            now = self.clock()
            if now < state.limited_until:
                return self._refuse(key, state.limited_until - now)
            state.requests += 1
            if self.churn and state.requests >= state.next_limit_at:
                low, high = self.lasting
                span = self._schedules[key].uniform(low, high)
                state.limited_until = now + span
                state.next_limit_at = state.requests + self._gap(key)
                return self._refuse(key, span)
            return None

    def record(self, key: str, usage: Usage) -> None:
        """The tokens a served request on `key` counts against its limits."""
        counted = usage.input_tokens + usage.cache_write_5m_tokens + usage.cache_write_1h_tokens
        with self._lock:
            state = self._state(key)
            state.tokens_used += counted + usage.output_tokens
            state.window.append((self.clock(), counted, usage.output_tokens))

    def headers(self, key: str, wall_now: float | None = None) -> list[tuple[str, str]]:
        """`key`'s rate-limit headers as they stand (they replace the fake's generic ones)."""
        with self._lock:
            state = self._state(key)
            now = self.clock()
            window = state.window
            while window and window[0][0] <= now - 60:
                window.popleft()
            used_in = sum(counted for _, counted, _ in window)
            used_out = sum(output for _, _, output in window)
            limited = now < state.limited_until
            wait = max(state.limited_until - now, 0.0) if limited else 60.0
            families = {
                "requests": (self.requests_per_minute, len(window)),
                "tokens": (self.tokens_per_minute, used_in + used_out),
                "input-tokens": (self.tokens_per_minute, used_in),
                "output-tokens": (self.tokens_per_minute // 5, used_out),
            }
            five_hours = min(state.tokens_used / self.tokens_per_5h, 1.0)
            seven_days = min(state.tokens_used / (20 * self.tokens_per_5h), 1.0)
        wall = time.time() if wall_now is None else wall_now
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall + wait))
        headers = []
        for family, (limit, used) in families.items():
            room = 0 if limited else max(limit - used, 0)
            headers += [
                (f"anthropic-ratelimit-{family}-limit", str(limit)),
                (f"anthropic-ratelimit-{family}-remaining", str(room)),
                (f"anthropic-ratelimit-{family}-reset", reset),
            ]
        return [
            *headers,
            ("anthropic-ratelimit-unified-5h-utilization", f"{five_hours:.4f}"),
            ("anthropic-ratelimit-unified-7d-utilization", f"{seven_days:.4f}"),
        ]

    def _state(self, key: str) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            # Each key's schedule is its own stream, seeded by the key: the order keys are first seen in
            # (a race between clients) does not change any key's schedule.
            self._schedules[key] = random.Random(f"{self.seed}:{key}")
            state = self._keys[key] = _KeyState(next_limit_at=self._gap(key))
        return state

    def _gap(self, key: str) -> int:
        low, high = self.every
        return self._schedules[key].randint(low, high)

    def _refuse(self, key: str, seconds: float) -> float:
        self.refused[key] = self.refused.get(key, 0) + 1
        return seconds
