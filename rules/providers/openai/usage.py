"""Reading OpenAI's answers: Chat Completions and Responses, whole bodies and streams.

The hooks `read_chat`, `read_response` (whole bodies), `ChatEvents` and `ResponsesEvents` (a stream's
events) are driven by rules/usage.py; fail open like it: nothing the provider sends raises here.
"""

from __future__ import annotations

from collections.abc import Mapping

from rules.usage import (
    Reading,
    Usage,
    dig,
    error_text,
    json_object,
    label,
    record_error,
    suspect_text,
    text,
    tokens,
)


def read_openai_chat_usage(usage: Mapping[str, object]) -> Usage:
    """A Chat Completions `usage`: `prompt_tokens` includes cached tokens, `completion_tokens` reasoning."""
    return _read_usage(usage, "prompt_tokens", "completion_tokens")


def read_openai_responses_usage(usage: Mapping[str, object]) -> Usage:
    """A Responses `usage`: `input_tokens` includes cached tokens, `output_tokens` reasoning."""
    return _read_usage(usage, "input_tokens", "output_tokens")


def _read_usage(usage: Mapping[str, object], input_name: str, output_name: str) -> Usage:
    """Both APIs' usage, which differ only in names: `<input>` with `<input>_details.cached_tokens` in it,
    `<output>` with `<output>_details.reasoning_tokens` in it."""
    suspect: dict[str, str] = {}
    cached = tokens(dig(usage, (f"{input_name}_details", "cached_tokens")), "cached_tokens", suspect)
    return Usage(
        input_tokens=_uncached(tokens(usage.get(input_name), input_name, suspect), cached),
        cache_read_tokens=cached,
        output_tokens=tokens(usage.get(output_name), output_name, suspect),
        reasoning_tokens=tokens(
            dig(usage, (f"{output_name}_details", "reasoning_tokens")), "reasoning_tokens", suspect
        ),
        suspect=suspect_text(suspect),
    )


def _uncached(total: int | None, cached: int | None) -> int | None:
    if total is None:
        return None
    return max(total - (cached or 0), 0)


# --- whole bodies -----------------------------------------------------------------------------------------


def read_chat(obj: Mapping[str, object]) -> Reading:
    """A chat completion (`WireFormat.read_body`)."""
    reading = Reading()
    _read_chat_object(reading, obj)
    usage = obj.get("usage")
    if isinstance(usage, Mapping):
        _set_chat_usage(reading, usage)
    return reading


def read_response(response: Mapping[str, object]) -> Reading:
    """A Responses answer (`WireFormat.read_body`)."""
    reading = Reading()
    _read_response_object(reading, response, final=True)
    return reading


def _read_chat_object(reading: Reading, obj: Mapping[str, object]) -> None:
    """Id, model, service tier and finish reason of a chat completion or one of its chunks."""
    # Azure sends a first chunk with empty id and model (prompt filter results): keep the first real ones.
    reading.response_id = reading.response_id or text(obj.get("id"))
    reading.model = reading.model or text(obj.get("model"))
    tier = text(obj.get("service_tier"))
    if tier is not None:
        reading.usage.service_tier = tier
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, Mapping):
                reason = text(choice.get("finish_reason"))
                if reason is not None:
                    reading.stop_reason = reason


def _set_chat_usage(reading: Reading, usage: Mapping[str, object]) -> None:
    new = read_openai_chat_usage(usage)
    new.service_tier = reading.usage.service_tier
    reading.usage = new
    reading.usage_seen = True


def _read_response_object(reading: Reading, response: Mapping[str, object], *, final: bool) -> None:
    """A Responses API `response` object; `final` when it is the last word (status, error)."""
    reading.response_id = text(response.get("id")) or reading.response_id
    reading.model = text(response.get("model")) or reading.model
    usage = response.get("usage")
    if isinstance(usage, Mapping):
        tier = reading.usage.service_tier
        reading.usage = read_openai_responses_usage(usage)
        reading.usage.service_tier = tier
        reading.usage_seen = True
    # Hosted web search is counted beside `usage`, in `tool_usage.web_search.num_requests`.
    suspect: dict[str, str] = {}
    searches = tokens(dig(response, ("tool_usage", "web_search", "num_requests")), "num_requests", suspect)
    if searches is not None:
        reading.usage.web_search_requests = searches
    if suspect:
        reading.usage.suspect = "; ".join(filter(None, (reading.usage.suspect, suspect_text(suspect))))
    # The request's tier ("auto") comes first; the one that served it replaces it.
    tier = text(response.get("service_tier"))
    if tier is not None:
        reading.usage.service_tier = tier
    if final:
        status = text(response.get("status"))
        reading.stop_reason = status or reading.stop_reason
        if reading.error is None:
            reading.error = error_text(response.get("error"))
            if reading.error is None and status == "failed":
                reading.error = "response failed without an error object"


# --- Chat Completions streams -----------------------------------------------------------------------------

# A chat chunk's delta fields that carry output (the role-only first chunk carries none).
_CHAT_OUTPUT_FIELDS = ("content", "tool_calls", "refusal", "reasoning", "reasoning_content", "function_call")
# Chat chunks parsed whole: the first few (id, model) and all up to the first output (time to first token).
# After that a chunk is parsed only if a cheap substring test says it may carry usage, an error or a finish.
_CHAT_HEAD_CHUNKS = 2


class ChatEvents:
    """The chunks of one Chat Completions stream (`WireFormat.stream_events`).

    https://platform.openai.com/docs/api-reference/chat-streaming"""

    __slots__ = ("_chunks_parsed", "_output_seen")

    def __init__(self) -> None:
        self._output_seen = False
        self._chunks_parsed = 0

    def on_event(self, name: str | None, data: str, reading: Reading) -> bool:
        if data.startswith("[DONE]"):
            reading.complete = True
            return False
        if (
            self._output_seen
            and self._chunks_parsed >= _CHAT_HEAD_CHUNKS
            and name != "error"
            and not _chat_chunk_matters(data)
        ):
            return False
        self._chunks_parsed += 1
        chunk = json_object(data)
        if chunk is None:
            if name == "error":
                record_error(reading, f"in-stream error: {data[:200]}")
            return False
        if chunk.get("error") is not None or name == "error":
            record_error(reading, error_text(chunk.get("error")) or error_text(chunk) or "in-stream error")
        _read_chat_object(reading, chunk)
        usage = chunk.get("usage")
        if isinstance(usage, Mapping):
            _set_chat_usage(reading, usage)
        if not self._output_seen and _chat_chunk_has_output(chunk):
            self._output_seen = True
            return True
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


# --- Responses streams ------------------------------------------------------------------------------------

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


class ResponsesEvents:
    """The events of one Responses stream (`WireFormat.stream_events`): every `*.delta` bears output.

    https://platform.openai.com/docs/api-reference/responses-streaming"""

    __slots__ = ()

    def on_event(self, name: str | None, data: str, reading: Reading) -> bool:
        payload: Mapping[str, object] | None = None
        if name is None:
            payload = json_object(data)
            name = text(payload.get("type")) if payload is not None else None
        if name is None:
            return False
        if name.endswith(".delta"):
            return True
        if name not in _RESPONSES_READ:
            return False
        if payload is None:
            payload = json_object(data)
        if name == "error":
            record_error(reading, _responses_error_event(payload) or f"in-stream error: {data[:200]}")
            return False
        if payload is None:
            return False
        terminal = name in _RESPONSES_TERMINAL
        response = payload.get("response")
        if isinstance(response, Mapping):
            _read_response_object(reading, response, final=terminal)
        if terminal:
            reading.complete = True
            if name == "response.failed" and reading.error is None:
                reading.error = "response failed without an error object"
        return False


def _responses_error_event(payload: Mapping[str, object] | None) -> str | None:
    """A Responses `error` event: `{"type":"error","code":...,"message":...}`, or the error nested."""
    if payload is None:
        return None
    nested = error_text(payload.get("error"))
    if nested is not None:
        return nested
    kind = label(payload.get("code")) or "error"
    message = text(payload.get("message"))
    return f"{kind}: {message}" if message else None


def chat_output_chars(name: str | None, data: str) -> int:
    """The characters of output one Chat Completions chunk carries: content, reasoning, a refusal, tool-call
    arguments, over every choice (`WireFormat.output_chars`)."""
    chunk = json_object(data) if not data.startswith("[DONE]") else None
    choices = chunk.get("choices") if chunk is not None else None
    if not isinstance(choices, list):
        return 0
    count = 0
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, Mapping) else None
        if not isinstance(delta, Mapping):
            continue
        for key in ("content", "reasoning_content", "reasoning", "refusal"):
            if isinstance(value := delta.get(key), str):
                count += len(value)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping) and isinstance(arguments := function.get("arguments"), str):
                count += len(arguments)
    return count


def responses_output_chars(name: str | None, data: str) -> int:
    """The characters of output one Responses stream event carries: every `*.delta` event's `delta`."""
    if name is None or not name.endswith(".delta"):
        return 0
    payload = json_object(data)
    delta = payload.get("delta") if payload is not None else None
    return len(delta) if isinstance(delta, str) else 0
