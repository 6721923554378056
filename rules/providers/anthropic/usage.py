"""Reading Anthropic's answers: a Messages body or stream, a token count.

https://docs.anthropic.com/en/api/messages, .../messages-streaming, .../messages-count-tokens. The hooks
`read_message`, `read_count` (whole bodies) and `MessagesEvents` (a stream's events) are driven by
rules/usage.py; fail open like it: nothing the provider sends raises here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rules.usage import (
    Reading,
    Usage,
    count,
    dig,
    error_text,
    json_object,
    record_error,
    suspect_text,
    text,
    tokens,
)

# Anthropic usage, flattened to (name, path). A `message_delta` overwrites exactly the names it carries.
# Field names as in the SDK's `types/usage.py`.
_COUNTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input", ("input_tokens",)),
    ("cache_read", ("cache_read_input_tokens",)),
    ("cache_write", ("cache_creation_input_tokens",)),
    ("cache_write_5m", ("cache_creation", "ephemeral_5m_input_tokens")),
    ("cache_write_1h", ("cache_creation", "ephemeral_1h_input_tokens")),
    ("output", ("output_tokens",)),
    ("thinking", ("output_tokens_details", "thinking_tokens")),
    ("web_search", ("server_tool_use", "web_search_requests")),
)
_TEXTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("service_tier", ("service_tier",)),
    ("speed", ("speed",)),
)


@dataclass(slots=True)
class _AnthropicFields:
    counts: dict[str, int] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    suspect: dict[str, str] = field(default_factory=dict)

    def overwrite(self, usage: Mapping[str, object]) -> None:
        """Cumulative semantics: every field the frame carries replaces the previous value; none is added."""
        for name, path in _COUNTS:
            shown = ".".join(path)
            found = tokens(dig(usage, path), shown, self.suspect)
            if found is not None:
                self.counts[name] = found
            elif shown in self.suspect:
                # The frame did carry this count, absurdly: what an earlier frame said is no longer it.
                self.counts.pop(name, None)
        for name, path in _TEXTS:
            found_text = text(dig(usage, path))
            if found_text is not None:
                self.texts[name] = found_text

    def usage(self) -> Usage:
        counts = self.counts
        write_5m, write_1h = _split_cache_writes(
            counts.get("cache_write"), counts.get("cache_write_5m"), counts.get("cache_write_1h")
        )
        return Usage(
            input_tokens=counts.get("input"),
            cache_read_tokens=counts.get("cache_read"),
            cache_write_5m_tokens=write_5m,
            cache_write_1h_tokens=write_1h,
            output_tokens=counts.get("output"),
            reasoning_tokens=counts.get("thinking"),
            web_search_requests=counts.get("web_search"),
            service_tier=self.texts.get("service_tier"),
            speed=self.texts.get("speed"),
            suspect=suspect_text(self.suspect),
        )


def _split_cache_writes(
    total: int | None, by_5m: int | None, by_1h: int | None
) -> tuple[int | None, int | None]:
    """(5m, 1h) cache writes. Without the `cache_creation` breakdown all of the total is 5m writes.

    `message_delta` carries a newer cumulative total but no breakdown, so the total wins and the 1h part of
    the last breakdown seen is kept; the 5m part is the rest.
    """
    if by_5m is None and by_1h is None:
        return total, None
    if total is None:
        return by_5m, by_1h
    one_hour = by_1h if by_1h is not None else total - (by_5m or 0)
    one_hour = min(max(one_hour, 0), total)
    return total - one_hour, one_hour


def read_anthropic_usage(usage: Mapping[str, object]) -> Usage:
    """An Anthropic `usage` object. `input_tokens` there is already uncached input only."""
    fields = _AnthropicFields()
    fields.overwrite(usage)
    return fields.usage()


# --- whole bodies -----------------------------------------------------------------------------------------


def read_message(message: Mapping[str, object]) -> Reading:
    """A Messages answer (`WireFormat.read_body`)."""
    reading = Reading(
        response_id=text(message.get("id")),
        model=text(message.get("model")),
        stop_reason=text(message.get("stop_reason")),
    )
    usage = message.get("usage")
    if isinstance(usage, Mapping):
        reading.usage = read_anthropic_usage(usage)
        reading.usage_seen = True
    return reading


def read_count(body: Mapping[str, object]) -> Reading:
    """A token count's answer (`WireFormat.read_body`): `{"input_tokens": N}`, not billed usage."""
    return Reading(counted_tokens=count(body.get("input_tokens")))


# --- streams ----------------------------------------------------------------------------------------------

# Events worth a JSON parse; everything else is known from its name alone.
_READ = frozenset({"message_start", "message_delta", "error"})


class MessagesEvents:
    """The events of one Messages stream (`WireFormat.stream_events`).

    https://docs.anthropic.com/en/docs/build-with-claude/streaming"""

    __slots__ = ("_fields",)

    def __init__(self) -> None:
        self._fields = _AnthropicFields()

    def on_event(self, name: str | None, data: str, reading: Reading) -> bool:
        payload: Mapping[str, object] | None = None
        if name is None:  # Anthropic always names its events; the JSON `type` says the same when it does not
            payload = json_object(data)
            name = text(payload.get("type")) if payload is not None else None
        # The hot path: text deltas are most of the stream and need no parse.
        if name == "content_block_delta":
            return True
        if name == "message_stop":
            reading.complete = True
            return False
        if name not in _READ:
            return False  # ping, content_block_start/stop, events added later
        if payload is None:
            payload = json_object(data)
        if name == "error":
            found = error_text(payload.get("error")) if payload is not None else None
            record_error(reading, found or f"in-stream error: {data[:200]}")
            return False
        if payload is None:
            return False
        if name == "message_start":
            message = payload.get("message")
            if isinstance(message, Mapping):
                self._read_frame(message, reading)
        else:  # message_delta
            delta = payload.get("delta")
            if isinstance(delta, Mapping):
                reading.stop_reason = text(delta.get("stop_reason")) or reading.stop_reason
            self._read_frame(payload, reading)
        return False

    def _read_frame(self, frame: Mapping[str, object], reading: Reading) -> None:
        reading.response_id = text(frame.get("id")) or reading.response_id
        reading.model = text(frame.get("model")) or reading.model
        reading.stop_reason = text(frame.get("stop_reason")) or reading.stop_reason
        usage = frame.get("usage")
        if isinstance(usage, Mapping):
            self._fields.overwrite(usage)
            reading.usage = self._fields.usage()
            reading.usage_seen = True


def output_chars(name: str | None, data: str) -> int:
    """The characters of output one Messages stream event carries: a text, thinking or tool-input delta
    (`WireFormat.output_chars`)."""
    payload = json_object(data) if name in ("content_block_delta", None) else None
    if payload is None or (name is None and payload.get("type") != "content_block_delta"):
        return 0
    delta = payload.get("delta")
    if not isinstance(delta, Mapping):
        return 0
    return sum(
        len(value) for key in ("text", "thinking", "partial_json") if isinstance(value := delta.get(key), str)
    )
