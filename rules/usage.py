"""What one LLM response says about itself: model, id, stop reason, token usage, error.

Reads an answer of any wire format (rules/providers/) from a whole body (`read_response_body`) or
incrementally from a stream (`StreamReader`), and normalizes its usage into one `Usage`. What is generic
lives here: JSON and SSE parsing, error statuses and envelopes, when a stream is complete, the first
output-bearing event, and the small readers every wire format's own reader uses (`tokens`, `text`,
`error_text`, ...). What a wire format's answer holds is read by its hooks (`WireFormat.read_body`,
`WireFormat.stream_events`), in its provider's package (`rules/providers/<provider>/usage.py`).

Fails open: provider input never raises here. Whatever cannot be read is left None, and a body or stream that
says nothing usable records why in `Reading.error`. A token count that no real call has (negative, not an
integer, over MAX_TOKENS_PER_CALL) is left None too, and named in `Usage.suspect` so that the call is not
priced from what is left (addons/calls.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from rules.sse import SSEEvent, SSEParser

if TYPE_CHECKING:
    from rules.providers import StreamEvents, WireFormat


@dataclass(slots=True)
class Usage:
    """Normalized token usage; None means the provider did not say."""

    input_tokens: int | None = None  # UNCACHED input only (OpenAI: prompt/input tokens minus cached_tokens)
    cache_read_tokens: int | None = None
    cache_write_5m_tokens: int | None = None
    cache_write_1h_tokens: int | None = None  # Anthropic cache_creation.ephemeral_1h_input_tokens
    output_tokens: int | None = None  # INCLUDING reasoning
    reasoning_tokens: int | None = None
    web_search_requests: int | None = None
    service_tier: str | None = None
    speed: str | None = None
    # Counts the provider sent that cannot be a real call's (see MAX_TOKENS_PER_CALL), as "name=value";
    # they are left None above and the call is not priced from them.
    suspect: str | None = None


# Over this many tokens in one call a reported count is not believed. The largest context windows are
# around 10^7 tokens and no model writes more than a few 10^5 in one answer, so 10^9 is two orders of
# magnitude past anything real; it is also far below what a float carries exactly and SQLite's INTEGER
# holds, so a count that passes can be stored and priced.
MAX_TOKENS_PER_CALL = 10**9


@dataclass(slots=True)
class Reading:
    """What one response told us."""

    model: str | None = None
    response_id: str | None = None  # Anthropic message id / OpenAI chatcmpl/resp id
    stop_reason: str | None = None  # anthropic stop_reason / openai finish_reason / responses status
    usage: Usage = field(default_factory=Usage)
    usage_seen: bool = False  # any usage frame seen at all
    counted_tokens: int | None = None  # count_tokens result (not billed usage)
    error: str | None = None  # "<type>: <message>", or a note on why the reading is incomplete
    complete: bool = False  # the terminal frame was seen, or a whole JSON body was parsed
    output_chars: int = 0  # characters of output streamed so far, when the reader counts them


# --- whole bodies -----------------------------------------------------------------------------------------


def read_response_body(wire: WireFormat, body: bytes, status: int) -> Reading:
    """A non-streamed, already decoded response body of `wire`'s API.

    Status >= 400: the provider's error envelope becomes `error` ("HTTP <status>" when there is none).
    A 2xx body that is not a JSON object gives `error="malformed JSON response: ..."`; a JSON object is read
    by `wire.read_body`, and an error envelope in it is the `error` when the wire format's reader found
    none. Never raises on the body.
    """
    parsed, problem = parse_json(body)
    obj = parsed if isinstance(parsed, Mapping) else None
    if status >= 400:
        message = (envelope_error(obj) or bare_error(obj)) if obj is not None else None
        return Reading(error=message or f"HTTP {status}", complete=obj is not None)
    if obj is None:
        return Reading(error=f"malformed JSON response: {problem or 'not a JSON object'}")
    reading = wire.read_body(obj) if wire.read_body is not None else Reading()
    reading.complete = True
    if reading.error is None:
        reading.error = envelope_error(obj)
    return reading


# --- streams ----------------------------------------------------------------------------------------------


class EventParser(Protocol):
    """An incremental parser of one stream framing: bytes cut anywhere in, whole events out (`event` its
    name, `data` its payload as text). Never raises on input; `failure` says why it stopped reading (a frame
    that fails its checksum), `oversized` that it dropped an event too large to hold."""

    oversized: bool

    def feed(self, chunk: bytes) -> Sequence[SSEEvent]: ...

    def close(self) -> object: ...

    @property
    def failure(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Framing:
    """How a wire format's streams are framed (`WireFormat.stream_framing`): the content type that marks
    a streamed answer, and a fresh parser for one."""

    name: str
    content_type: str
    parser: Callable[[], EventParser]


_FRAMINGS: dict[str, Framing] = {"sse": Framing("sse", "text/event-stream", SSEParser)}


def register_framing(found: Framing) -> None:
    """Make a framing known; one whose parser needs a library rules/ may not import (AWS event-stream
    frames: botocore) is registered by the addon that imports it (addons/event_frames.py)."""
    _FRAMINGS[found.name] = found


def framing(name: str) -> Framing:
    try:
        return _FRAMINGS[name]
    except KeyError:
        raise KeyError(
            f"stream framing {name!r} is not registered (known: {', '.join(sorted(_FRAMINGS))})"
        ) from None


def is_stream_type(wire: WireFormat, content_type: str | None) -> bool:
    """Whether an answer's Content-Type is its wire format's stream framing."""
    wanted = framing(wire.stream_framing).content_type
    return (content_type or "").split(";", 1)[0].strip().lower() == wanted


class StreamReader:
    """Reads a streamed response body as it passes; fails open (never raises on what the provider sends).

    `feed()` takes the decoded body in chunks cut anywhere and says whether that chunk held the first
    output-bearing event (for time to first token); `finish()` ends the body; `reading` is the partial
    reading at any point, for a connection that dies mid-stream. Each event goes to the wire format's own
    reader (`wire.stream_events()`), which fills the reading and marks it complete on its terminal event.
    """

    __slots__ = (
        "_count",
        "_cut_short",
        "_finished",
        "_on_event",
        "_output_seen",
        "_parser",
        "_reading",
        "_watch",
        "stopped",
    )

    def __init__(self, wire: WireFormat, *, watch: Callable[[Reading], bool] | None = None) -> None:
        """`watch`: also count the characters of output each event carries (`reading.output_chars`, where
        the wire format can say: `WireFormat.output_chars`), and ask `watch` after each event whether to
        stop there; the reader then reads nothing more (`stopped`), so the reading ends at that event."""
        self._count = wire.output_chars if watch is not None else None
        self._watch = watch
        self.stopped = False
        if wire.stream_events is not None:
            events: StreamEvents = wire.stream_events()
            self._on_event = events.on_event  # bound once: called for every event of the stream
            self._cut_short = f"stream ended before {wire.terminal_event}"
        else:
            self._on_event = _unread
            self._cut_short = f"{wire.name} streams are not read"
        self._parser = framing(wire.stream_framing).parser()
        self._reading = Reading()
        self._output_seen = False
        self._finished = False

    def feed(self, chunk: bytes) -> bool:
        """True iff this chunk completed the first output-bearing event of the call."""
        if self._finished:
            return False
        first = False
        on_event, reading = self._on_event, self._reading
        count, watch = self._count, self._watch
        for event in self._parser.feed(chunk):
            if on_event(event.event, event.data, reading) and not self._output_seen:
                self._output_seen = first = True
            if count is not None:
                reading.output_chars += count(event.event, event.data)
            if watch is not None and watch(reading):
                self.stopped = self._finished = True
                break
        if self._parser.failure is not None:
            record_error(reading, self._parser.failure)
        return first

    def finish(self) -> Reading:
        """End of body. Without a terminal frame the reading keeps its partial usage and says why."""
        if not self._finished:
            self._finished = True
            self._parser.close()
            reading = self._reading
            if not reading.complete and reading.error is None:
                reading.error = self._cut_short
                if self._parser.oversized:
                    reading.error += " (an event over 16 MiB was dropped)"
        return self.reading

    @property
    def reading(self) -> Reading:
        """A copy of what has been read so far."""
        return replace(self._reading, usage=replace(self._reading.usage))


def _unread(name: str | None, data: str, reading: Reading) -> bool:
    """An event of a wire format whose streams sluice cannot read: it bears nothing sluice can tell."""
    return False


def record_error(reading: Reading, message: str) -> None:
    """An in-stream error: the first is the cause, anything after it a consequence."""
    if reading.error is None:
        reading.error = message


# --- small readers (every wire format's reader uses them) --------------------------------------------------


def parse_json(raw: bytes | str) -> tuple[object, str | None]:
    """(value, None), or (None, why it is not JSON). Deep nesting and huge numbers are refused, not raised."""
    try:
        return json.loads(raw), None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, str(e) or type(e).__name__


def json_object(raw: str) -> Mapping[str, object] | None:
    value, _ = parse_json(raw)
    return value if isinstance(value, Mapping) else None


def envelope_error(body: Mapping[str, object]) -> str | None:
    """The error an envelope nests: `{"error": {...}}` (Anthropic adds `"type": "error"` beside it)."""
    return error_text(body.get("error"))


def bare_error(body: Mapping[str, object]) -> str | None:
    """An error answer's message when it is not nested in `error` (AWS: `{"message"}`, `__type` in sluice's
    own answers); read only from an error status, where such a body can be nothing else."""
    if "error" in body:
        return None
    kind, message = text(body.get("__type")), text(body.get("message"))
    if kind is None:
        return message
    return f"{kind.rsplit('#', 1)[-1]}: {message}" if message else kind


def error_text(error: object) -> str | None:
    """'<type>: <message>' from an error object; OpenAI errors without a type fall back to their code."""
    if isinstance(error, str):
        return error or None
    if not isinstance(error, Mapping):
        return None
    kind = label(error.get("type")) or label(error.get("code"))
    message = text(error.get("message"))
    if kind is None and message is None:
        return None
    if message is None:
        return kind
    return f"{kind or 'error'}: {message}"


def dig(obj: Mapping[str, object], path: tuple[str, ...]) -> object:
    value: object = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def count(value: object) -> int | None:
    """A token count: a non-negative int. A bool (an int subclass), string or negative is not one."""
    return value if type(value) is int and value >= 0 else None


def tokens(value: object, name: str, suspect: dict[str, str]) -> int | None:
    """A usage count the call can be priced from: an int from 0 to MAX_TOKENS_PER_CALL. Absent or null is
    None; anything else (negative, huge, a float, a string, a bool) is None too and noted in `suspect`, so
    the call is not priced from a partial or absurd reading. A later valid value of `name` clears it."""
    if value is None:
        return None
    if type(value) is int and 0 <= value <= MAX_TOKENS_PER_CALL:
        suspect.pop(name, None)
        return value
    shown = repr(value)
    suspect[name] = shown if len(shown) <= 40 else f"{shown[:37]}..."
    return None


def suspect_text(suspect: Mapping[str, str]) -> str | None:
    return "; ".join(f"{name}={value}" for name, value in suspect.items()) or None


def text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def label(value: object) -> str | None:
    """An error type or code: some gateways send the HTTP status as a number."""
    if type(value) is int:
        return str(value)
    return text(value)
