"""What one LLM response says about itself: model, id, stop reason, token usage, error.

Reads the four metered APIs — "messages" (Anthropic /v1/messages), "count_tokens" (Anthropic
/v1/messages/count_tokens), "chat" (OpenAI /v1/chat/completions) and "responses" (OpenAI /v1/responses) —
from a whole body (`read_response_body`) or incrementally from a stream (`StreamReader`), and normalizes
their usage into one `Usage`.

Fails open: provider input never raises here. Whatever cannot be read is left None, and a body or stream that
says nothing usable records why in `Reading.error`. Only the API kind, which the caller chooses, is validated.
A token count that no real call has (negative, not an integer, over MAX_TOKENS_PER_CALL) is left None too,
and named in `Usage.suspect` so that the call is not priced from what is left (addons/calls.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from rules.sse import SSEEvent, SSEParser

API_KINDS = ("messages", "count_tokens", "chat", "responses")


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


# --- usage objects ----------------------------------------------------------------------------------------

# Anthropic usage, flattened to (name, path). A `message_delta` overwrites exactly the names it carries.
# https://docs.anthropic.com/en/api/messages-streaming ; field names as in the SDK's `types/usage.py`.
_ANTHROPIC_COUNTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input", ("input_tokens",)),
    ("cache_read", ("cache_read_input_tokens",)),
    ("cache_write", ("cache_creation_input_tokens",)),
    ("cache_write_5m", ("cache_creation", "ephemeral_5m_input_tokens")),
    ("cache_write_1h", ("cache_creation", "ephemeral_1h_input_tokens")),
    ("output", ("output_tokens",)),
    ("thinking", ("output_tokens_details", "thinking_tokens")),
    ("web_search", ("server_tool_use", "web_search_requests")),
)
_ANTHROPIC_TEXTS: tuple[tuple[str, tuple[str, ...]], ...] = (
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
        for name, path in _ANTHROPIC_COUNTS:
            shown = ".".join(path)
            count = _tokens(_dig(usage, path), shown, self.suspect)
            if count is not None:
                self.counts[name] = count
            elif shown in self.suspect:
                # The frame did carry this count, absurdly: what an earlier frame said is no longer it.
                self.counts.pop(name, None)
        for name, path in _ANTHROPIC_TEXTS:
            text = _text(_dig(usage, path))
            if text is not None:
                self.texts[name] = text

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
            suspect=_suspect_text(self.suspect),
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


def read_openai_chat_usage(usage: Mapping[str, object]) -> Usage:
    """A Chat Completions `usage`: `prompt_tokens` includes cached tokens, `completion_tokens` reasoning."""
    suspect: dict[str, str] = {}
    cached = _tokens(_dig(usage, ("prompt_tokens_details", "cached_tokens")), "cached_tokens", suspect)
    return Usage(
        input_tokens=_uncached(_tokens(usage.get("prompt_tokens"), "prompt_tokens", suspect), cached),
        cache_read_tokens=cached,
        output_tokens=_tokens(usage.get("completion_tokens"), "completion_tokens", suspect),
        reasoning_tokens=_tokens(
            _dig(usage, ("completion_tokens_details", "reasoning_tokens")), "reasoning_tokens", suspect
        ),
        suspect=_suspect_text(suspect),
    )


def read_openai_responses_usage(usage: Mapping[str, object]) -> Usage:
    """A Responses `usage`: `input_tokens` includes cached tokens, `output_tokens` reasoning."""
    suspect: dict[str, str] = {}
    cached = _tokens(_dig(usage, ("input_tokens_details", "cached_tokens")), "cached_tokens", suspect)
    return Usage(
        input_tokens=_uncached(_tokens(usage.get("input_tokens"), "input_tokens", suspect), cached),
        cache_read_tokens=cached,
        output_tokens=_tokens(usage.get("output_tokens"), "output_tokens", suspect),
        reasoning_tokens=_tokens(
            _dig(usage, ("output_tokens_details", "reasoning_tokens")), "reasoning_tokens", suspect
        ),
        suspect=_suspect_text(suspect),
    )


def _uncached(total: int | None, cached: int | None) -> int | None:
    if total is None:
        return None
    return max(total - (cached or 0), 0)


# --- whole bodies -----------------------------------------------------------------------------------------


def read_response_body(api: str, body: bytes, status: int) -> Reading:
    """A non-streamed, already decoded response body.

    Status >= 400: the provider's error envelope becomes `error` ("HTTP <status>" when there is none).
    A 2xx body that is not a JSON object gives `error="malformed JSON response: ..."`. Never raises on the
    body; raises ValueError only for an `api` outside API_KINDS.
    """
    _check_api(api)
    parsed, problem = _parse_json(body)
    obj = parsed if isinstance(parsed, Mapping) else None
    if status >= 400:
        message = _envelope_error(obj) if obj is not None else None
        return Reading(error=message or f"HTTP {status}", complete=obj is not None)
    if obj is None:
        return Reading(error=f"malformed JSON response: {problem or 'not a JSON object'}")

    reading = Reading(complete=True)
    if api == "count_tokens":
        reading.counted_tokens = _count(obj.get("input_tokens"))
    elif api == "messages":
        _read_anthropic_message(reading, obj)
    elif api == "chat":
        _read_chat_object(reading, obj)
        usage = obj.get("usage")
        if isinstance(usage, Mapping):
            _set_chat_usage(reading, usage)
    else:
        _read_response_object(reading, obj, final=True)
    if reading.error is None:
        reading.error = _envelope_error(obj)
    return reading


def _read_anthropic_message(reading: Reading, message: Mapping[str, object]) -> None:
    reading.response_id = _text(message.get("id"))
    reading.model = _text(message.get("model"))
    reading.stop_reason = _text(message.get("stop_reason"))
    usage = message.get("usage")
    if isinstance(usage, Mapping):
        reading.usage = read_anthropic_usage(usage)
        reading.usage_seen = True


def _read_chat_object(reading: Reading, obj: Mapping[str, object]) -> None:
    """Id, model, service tier and finish reason of a chat completion or one of its chunks."""
    # Azure sends a first chunk with empty id and model (prompt filter results): keep the first real ones.
    reading.response_id = reading.response_id or _text(obj.get("id"))
    reading.model = reading.model or _text(obj.get("model"))
    tier = _text(obj.get("service_tier"))
    if tier is not None:
        reading.usage.service_tier = tier
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, Mapping):
                reason = _text(choice.get("finish_reason"))
                if reason is not None:
                    reading.stop_reason = reason


def _set_chat_usage(reading: Reading, usage: Mapping[str, object]) -> None:
    new = read_openai_chat_usage(usage)
    new.service_tier = reading.usage.service_tier
    reading.usage = new
    reading.usage_seen = True


def _read_response_object(reading: Reading, response: Mapping[str, object], *, final: bool) -> None:
    """A Responses API `response` object; `final` when it is the last word (status, error)."""
    reading.response_id = _text(response.get("id")) or reading.response_id
    reading.model = _text(response.get("model")) or reading.model
    usage = response.get("usage")
    if isinstance(usage, Mapping):
        tier = reading.usage.service_tier
        reading.usage = read_openai_responses_usage(usage)
        reading.usage.service_tier = tier
        reading.usage_seen = True
    # Hosted web search is counted beside `usage`, in `tool_usage.web_search.num_requests`.
    suspect: dict[str, str] = {}
    searches = _tokens(_dig(response, ("tool_usage", "web_search", "num_requests")), "num_requests", suspect)
    if searches is not None:
        reading.usage.web_search_requests = searches
    if suspect:
        reading.usage.suspect = "; ".join(filter(None, (reading.usage.suspect, _suspect_text(suspect))))
    # The request's tier ("auto") comes first; the one that served it replaces it.
    tier = _text(response.get("service_tier"))
    if tier is not None:
        reading.usage.service_tier = tier
    if final:
        status = _text(response.get("status"))
        reading.stop_reason = status or reading.stop_reason
        if reading.error is None:
            reading.error = _error_text(response.get("error"))
            if reading.error is None and status == "failed":
                reading.error = "response failed without an error object"


# --- streams ----------------------------------------------------------------------------------------------

# Anthropic events worth a JSON parse; everything else is known from its name alone.
_ANTHROPIC_READ = frozenset({"message_start", "message_delta", "error"})
_RESPONSES_READ = frozenset(
    {
        "response.created",
        "response.queued",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "error",
    }
)
_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_TERMINAL_NAME = {
    "messages": "message_stop",
    "count_tokens": "message_stop",
    "chat": "[DONE]",
    "responses": "response.completed",
}
# A chat chunk's delta fields that carry output (the role-only first chunk carries none).
_CHAT_OUTPUT_FIELDS = ("content", "tool_calls", "refusal", "reasoning", "reasoning_content", "function_call")
# Chat chunks parsed whole: the first few (id, model) and all up to the first output (time to first token).
# After that a chunk is parsed only if a cheap substring test says it may carry usage, an error or a finish.
_CHAT_HEAD_CHUNKS = 2


class StreamReader:
    """Reads a streamed response body as it passes; fails open (never raises on what the provider sends).

    `feed()` takes the decoded body in chunks cut anywhere and says whether that chunk held the first
    output-bearing event (for time to first token); `finish()` ends the body; `reading` is the partial
    reading at any point, for a connection that dies mid-stream.
    """

    def __init__(self, api: str) -> None:
        _check_api(api)
        self._api = api
        self._parser = SSEParser()
        self._reading = Reading()
        self._output_seen = False
        self._finished = False
        self._anthropic = _AnthropicFields()
        self._chat_chunks_parsed = 0
        if api == "chat":
            self._on_event = self._on_chat_event
        elif api == "responses":
            self._on_event = self._on_responses_event
        else:
            self._on_event = self._on_anthropic_event

    def feed(self, chunk: bytes) -> bool:
        """True iff this chunk completed the first output-bearing event of the call."""
        if self._finished:
            return False
        first = False
        for event in self._parser.feed(chunk):
            if self._on_event(event):
                first = True
        return first

    def finish(self) -> Reading:
        """End of body. Without a terminal frame the reading keeps its partial usage and says why."""
        if not self._finished:
            self._finished = True
            self._parser.close()
            reading = self._reading
            if not reading.complete and reading.error is None:
                reading.error = f"stream ended before {_TERMINAL_NAME[self._api]}"
                if self._parser.oversized:
                    reading.error += " (an event over 16 MiB was dropped)"
        return self.reading

    @property
    def reading(self) -> Reading:
        """A copy of what has been read so far."""
        return replace(self._reading, usage=replace(self._reading.usage))

    def _first_output(self) -> bool:
        if self._output_seen:
            return False
        self._output_seen = True
        return True

    def _record_error(self, message: str) -> None:
        # The first error is the cause; anything after it is a consequence.
        if self._reading.error is None:
            self._reading.error = message

    # Anthropic: https://docs.anthropic.com/en/docs/build-with-claude/streaming
    def _on_anthropic_event(self, event: SSEEvent) -> bool:
        name = event.event
        payload: Mapping[str, object] | None = None
        if name is None:  # Anthropic always names its events; the JSON `type` says the same when it does not
            payload = _json_object(event.data)
            name = _text(payload.get("type")) if payload is not None else None
        # The hot path: text deltas are most of the stream and need no parse.
        if name == "content_block_delta":
            return self._first_output()
        if name == "message_stop":
            self._reading.complete = True
            return False
        if name not in _ANTHROPIC_READ:
            return False  # ping, content_block_start/stop, events added later
        if payload is None:
            payload = _json_object(event.data)
        if name == "error":
            found = _error_text(payload.get("error")) if payload is not None else None
            self._record_error(found or f"in-stream error: {event.data[:200]}")
            return False
        if payload is None:
            return False
        if name == "message_start":
            message = payload.get("message")
            if isinstance(message, Mapping):
                self._read_anthropic_frame(message)
        else:  # message_delta
            delta = payload.get("delta")
            if isinstance(delta, Mapping):
                self._reading.stop_reason = _text(delta.get("stop_reason")) or self._reading.stop_reason
            self._read_anthropic_frame(payload)
        return False

    def _read_anthropic_frame(self, frame: Mapping[str, object]) -> None:
        reading = self._reading
        reading.response_id = _text(frame.get("id")) or reading.response_id
        reading.model = _text(frame.get("model")) or reading.model
        reading.stop_reason = _text(frame.get("stop_reason")) or reading.stop_reason
        usage = frame.get("usage")
        if isinstance(usage, Mapping):
            self._anthropic.overwrite(usage)
            reading.usage = self._anthropic.usage()
            reading.usage_seen = True

    # OpenAI Chat Completions: https://platform.openai.com/docs/api-reference/chat-streaming
    def _on_chat_event(self, event: SSEEvent) -> bool:
        data = event.data
        if data.startswith("[DONE]"):
            self._reading.complete = True
            return False
        if (
            self._output_seen
            and self._chat_chunks_parsed >= _CHAT_HEAD_CHUNKS
            and event.event != "error"
            and not _chat_chunk_matters(data)
        ):
            return False
        self._chat_chunks_parsed += 1
        chunk = _json_object(data)
        if chunk is None:
            if event.event == "error":
                self._record_error(f"in-stream error: {data[:200]}")
            return False
        if chunk.get("error") is not None or event.event == "error":
            self._record_error(_error_text(chunk.get("error")) or _error_text(chunk) or "in-stream error")
        reading = self._reading
        _read_chat_object(reading, chunk)
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            _set_chat_usage(reading, usage)
        if not self._output_seen and _chat_chunk_has_output(chunk):
            return self._first_output()
        return False

    # OpenAI Responses: https://platform.openai.com/docs/api-reference/responses-streaming
    def _on_responses_event(self, event: SSEEvent) -> bool:
        name = event.event
        payload: Mapping[str, object] | None = None
        if name is None:
            payload = _json_object(event.data)
            name = _text(payload.get("type")) if payload is not None else None
        if name is None:
            return False
        if name.endswith(".delta"):
            return self._first_output()
        if name not in _RESPONSES_READ:
            return False
        if payload is None:
            payload = _json_object(event.data)
        if name == "error":
            self._record_error(_responses_error_event(payload) or f"in-stream error: {event.data[:200]}")
            return False
        if payload is None:
            return False
        terminal = name in _RESPONSES_TERMINAL
        response = payload.get("response")
        if isinstance(response, Mapping):
            _read_response_object(self._reading, response, final=terminal)
        if terminal:
            self._reading.complete = True
            if name == "response.failed" and self._reading.error is None:
                self._reading.error = "response failed without an error object"
        return False


def _chat_chunk_matters(data: str) -> bool:
    """Cheap test of a chat chunk's raw JSON: could it carry usage, an error or a finish reason?

    `"usage":null` and `"finish_reason":null` are in every chunk, so a key counts only with a non-null value.
    A key cannot hide inside a string value: there its quotes would be escaped.
    """
    return _has_value(data, '"usage"') or _has_value(data, '"finish_reason"') or _has_value(data, '"error"')


def _has_value(data: str, quoted_key: str) -> bool:
    start = data.find(quoted_key)
    while start != -1:
        after = data[start + len(quoted_key) : start + len(quoted_key) + 64].lstrip()
        if not after:
            return True  # cannot tell cheaply: parse
        if after[0] == ":" and not after[1:].lstrip().startswith("null"):
            return True
        start = data.find(quoted_key, start + 1)
    return False


def _chat_chunk_has_output(chunk: Mapping[str, object]) -> bool:
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return False
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, Mapping) else None
        if isinstance(delta, Mapping) and any(delta.get(name) for name in _CHAT_OUTPUT_FIELDS):
            return True
    return False


def _responses_error_event(payload: Mapping[str, object] | None) -> str | None:
    """A Responses `error` event: `{"type":"error","code":...,"message":...}`, or the error nested."""
    if payload is None:
        return None
    nested = _error_text(payload.get("error"))
    if nested is not None:
        return nested
    kind = _label(payload.get("code")) or "error"
    message = _text(payload.get("message"))
    return f"{kind}: {message}" if message else None


# --- small readers ----------------------------------------------------------------------------------------


def _check_api(api: str) -> None:
    if api not in API_KINDS:
        raise ValueError(f"unknown API kind {api!r}; expected one of {', '.join(API_KINDS)}")


def _parse_json(raw: bytes | str) -> tuple[object, str | None]:
    """(value, None), or (None, why it is not JSON). Deep nesting and huge numbers are refused, not raised."""
    try:
        return json.loads(raw), None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, str(e) or type(e).__name__


def _json_object(raw: str) -> Mapping[str, object] | None:
    value, _ = _parse_json(raw)
    return value if isinstance(value, Mapping) else None


def _envelope_error(body: Mapping[str, object]) -> str | None:
    """Both providers nest the error: Anthropic `{"type":"error","error":{...}}`, OpenAI `{"error":{...}}`."""
    return _error_text(body.get("error"))


def _error_text(error: object) -> str | None:
    """'<type>: <message>' from an error object; OpenAI errors without a type fall back to their code."""
    if isinstance(error, str):
        return error or None
    if not isinstance(error, Mapping):
        return None
    kind = _label(error.get("type")) or _label(error.get("code"))
    message = _text(error.get("message"))
    if kind is None and message is None:
        return None
    if message is None:
        return kind
    return f"{kind or 'error'}: {message}"


def _dig(obj: Mapping[str, object], path: tuple[str, ...]) -> object:
    value: object = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _count(value: object) -> int | None:
    """A token count: a non-negative int. A bool (an int subclass), string or negative is not one."""
    return value if type(value) is int and value >= 0 else None


def _tokens(value: object, name: str, suspect: dict[str, str]) -> int | None:
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


def _suspect_text(suspect: Mapping[str, str]) -> str | None:
    return "; ".join(f"{name}={value}" for name, value in suspect.items()) or None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _label(value: object) -> str | None:
    """An error type or code: some gateways send the HTTP status as a number."""
    if type(value) is int:
        return str(value)
    return _text(value)
