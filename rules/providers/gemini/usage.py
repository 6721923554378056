"""Reading a Gemini answer: `usageMetadata`, `modelVersion`, `responseId`, `finishReason`, errors.

Every chunk of a stream is a whole `GenerateContentResponse` whose `usageMetadata` is cumulative, so each
one replaces what the last said; the last (with a `finishReason`) is the call's. There is no terminal
event: a stream whose last chunk has no finish reason ended early.

Mapped onto sluice's columns with the other providers' meaning (https://ai.google.dev/api/generate-content,
google-genai `types.GenerateContentResponseUsageMetadata`):
- `promptTokenCount` includes `cachedContentTokenCount`: input (uncached) is prompt - cached, plus
  `toolUsePromptTokenCount` (tool results fed back to the model are input too); cache read is cached;
- `candidatesTokenCount` excludes `thoughtsTokenCount`: output is candidates + thoughts (reasoning
  included, as everywhere), reasoning is thoughts.
Zero counts are left out of the JSON (protobuf), so a count missing from a usage object that is there is 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from rules.usage import Reading, Usage, json_object, record_error, suspect_text, text, tokens

_COUNTS = (
    "promptTokenCount",
    "cachedContentTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "toolUsePromptTokenCount",
)


def read_usage(metadata: Mapping[str, object]) -> Usage:
    suspect: dict[str, str] = {}
    found = {name: tokens(metadata.get(name, 0), name, suspect) for name in _COUNTS}
    prompt, cached = found["promptTokenCount"], found["cachedContentTokenCount"]
    candidates, thoughts = found["candidatesTokenCount"], found["thoughtsTokenCount"]
    tool_use = found["toolUsePromptTokenCount"]
    uncached = None
    if prompt is not None and cached is not None and tool_use is not None:
        uncached = max(prompt - cached, 0) + tool_use
    output = candidates + thoughts if candidates is not None and thoughts is not None else None
    return Usage(
        input_tokens=uncached,
        cache_read_tokens=cached,
        output_tokens=output,
        reasoning_tokens=thoughts,
        suspect=suspect_text(suspect),
    )


def read_body(obj: Mapping[str, object]) -> Reading:
    """A whole (2xx) answer."""
    reading = Reading()
    read_chunk(reading, obj)
    return reading


class GenerateEvents:
    """A `streamGenerateContent?alt=sse` stream: every event is a whole chunk, parsed whole (each carries
    the usage so far)."""

    __slots__ = ()

    def on_event(self, name: str | None, data: str, reading: Reading) -> bool:
        chunk = json_object(data)
        if chunk is None:
            if data.strip():
                record_error(reading, f"in-stream error: {data[:200]}")
            return False
        read_chunk(reading, chunk)
        return has_output(chunk)


def google_error(error: object) -> str | None:
    """'<STATUS>: <message>' from Google's error object (`{"code": 429, "status": "RESOURCE_EXHAUSTED",
    "message": ...}`); the code when there is no status name."""
    if not isinstance(error, Mapping):
        return None
    status = text(error.get("status"))
    code = error.get("code")
    kind = status or (str(code) if type(code) is int else None)
    message = text(error.get("message"))
    if kind is None and message is None:
        return None
    return f"{kind or 'error'}: {message}" if message else kind


def read_chunk(reading: Reading, chunk: Mapping[str, object]) -> None:
    """One GenerateContentResponse (a whole answer, or one chunk of a stream) into `reading`."""
    reading.response_id = text(chunk.get("responseId")) or reading.response_id
    reading.model = text(chunk.get("modelVersion")) or reading.model
    metadata = chunk.get("usageMetadata")
    if isinstance(metadata, Mapping):
        reading.usage = read_usage(metadata)
        reading.usage_seen = True
    candidates = chunk.get("candidates")
    for candidate in candidates if isinstance(candidates, list) else ():
        if isinstance(candidate, Mapping) and (reason := text(candidate.get("finishReason"))):
            reading.stop_reason = reason
            reading.complete = True
    blocked = chunk.get("promptFeedback")
    if isinstance(blocked, Mapping) and (reason := text(blocked.get("blockReason"))):
        # A refused prompt is a 200 without candidates: complete, and said why.
        reading.stop_reason = reason
        reading.complete = True
    if (problem := google_error(chunk.get("error"))) is not None:
        record_error(reading, problem)


def has_output(chunk: Mapping[str, object]) -> bool:
    """Whether a chunk carries output: a part with text, a function call, or a thought."""
    candidates = chunk.get("candidates")
    for candidate in candidates if isinstance(candidates, list) else ():
        content = candidate.get("content") if isinstance(candidate, Mapping) else None
        parts = content.get("parts") if isinstance(content, Mapping) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, Mapping) and (part.get("text") or part.get("functionCall")):
                return True
    return False


def output_chars(name: str | None, data: str) -> int:
    """The characters of output one streamed GenerateContentResponse carries: its parts' text and function
    call arguments (`WireFormat.output_chars`)."""
    chunk = json_object(data)
    candidates = chunk.get("candidates") if chunk is not None else None
    count = 0
    for candidate in candidates if isinstance(candidates, list) else ():
        content = candidate.get("content") if isinstance(candidate, Mapping) else None
        parts = content.get("parts") if isinstance(content, Mapping) else None
        for part in parts if isinstance(parts, list) else ():
            if not isinstance(part, Mapping):
                continue
            if isinstance(value := part.get("text"), str):
                count += len(value)
            call = part.get("functionCall")
            if isinstance(call, Mapping) and call.get("args") is not None:
                count += len(json.dumps(call["args"]))
    return count
