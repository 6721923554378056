"""InvokeModel with an Anthropic Messages body (`POST /model/{modelId}/invoke`, and
`/invoke-with-response-stream`): Anthropic's own readers, unwrapped from Bedrock's envelope.

A whole answer is an Anthropic message (no `model` field: the model is the path's). A stream's event-stream
frames are `chunk` events whose JSON payload is `{"bytes": <base64 of one Anthropic SSE event's JSON>,
"p": <padding>}`; the last one (`message_stop`) also carries `amazon-bedrock-invocationMetrics`
(`inputTokenCount`, `outputTokenCount`, `cacheReadInputTokenCount`, `cacheWriteInputTokenCount`), which
restates the usage `message_start` / `message_delta` already gave. Anything but a chunk is an exception
the stream ended with (`throttlingException`, `modelStreamErrorException`, ...).
https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModelWithResponseStream.html
"""

from __future__ import annotations

import base64
import binascii

from rules.providers.anthropic import transcript as anthropic_transcript
from rules.providers.anthropic import usage as anthropic_usage
from rules.transcript import JSONObject, Part
from rules.usage import Reading, json_object, record_error, text

CHUNK = "chunk"


def unwrap(data: str) -> tuple[str | None, str] | None:
    """A chunk's Anthropic event: (its `type`, its JSON), or None when the chunk holds none."""
    wrapper = json_object(data)
    return decode_bytes(wrapper.get("bytes")) if wrapper is not None else None


def decode_bytes(raw: object) -> tuple[str | None, str] | None:
    """A chunk's `bytes`: base64 of one Anthropic event's JSON -> (its `type`, the JSON)."""
    if not isinstance(raw, str):
        return None
    try:
        inner = base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    event = json_object(inner)
    return (text(event.get("type")) if event is not None else None), inner


def exception_text(name: str | None, data: str) -> str:
    """An exception frame as the row's error: `<type>: <message>`."""
    payload = json_object(data)
    message = text(payload.get("message")) or text(payload.get("Message")) if payload is not None else None
    return f"{name or 'exception'}: {message or data[:200]}"


class InvokeEvents:
    """The frames of one InvokeModelWithResponseStream answer (`WireFormat.stream_events`)."""

    __slots__ = ("_messages",)

    def __init__(self) -> None:
        self._messages = anthropic_usage.MessagesEvents()

    def on_event(self, name: str | None, data: str, reading: Reading) -> bool:
        if name != CHUNK:
            record_error(reading, exception_text(name, data))
            return False
        found = unwrap(data)
        if found is None:
            record_error(reading, f"chunk without an Anthropic event: {data[:200]}")
            return False
        return self._messages.on_event(found[0], found[1], reading)


class InvokeStream:
    """The transcript of a streamed answer: each chunk's Anthropic event to Anthropic's builder."""

    def __init__(self) -> None:
        self._messages = anthropic_transcript.MessagesStream()

    def take(self, event: str | None, payload: JSONObject) -> None:
        found = decode_bytes(payload.get("bytes")) if event == CHUNK else None
        inner = json_object(found[1]) if found is not None else None
        if found is not None and inner is not None:
            self._messages.take(found[0], dict(inner))

    def parts(self) -> list[Part]:
        return self._messages.parts()
