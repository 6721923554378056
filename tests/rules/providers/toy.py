"""A toy provider, written the way README.md's "Adding a provider" says: one module that declares its
Provider and WireFormat and registers them. Its API: `POST /toy/v1/complete`, `{"model", "prompt",
"instructions": [..], "limit"}` in; `{"model", "id", "text", "usage": {"in", "cached", "out"}}` out, or a
stream of `data: {"delta": ".."}` events ending with `event: done` carrying the usage."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from rules.config import SystemBlock
from rules.providers import Provider, WireFormat, register
from rules.rewrite import JSONObject, new_blocks
from rules.transcript import Part
from rules.usage import Reading, Usage, json_object, suspect_text, text, tokens


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    return json.dumps({"problem": {"status": status, "detail": message}}).encode()


TOY = Provider(
    name="toy",
    hosts=("api.toy.example",),
    request_headers=("x-toy-*",),
    response_headers=("x-toy-*",),
    error_body=error_body,
    sse_error_event=lambda status, message: b"event: problem\ndata: " + error_body(status, message) + b"\n\n",
    write_credential=lambda headers, secret, kind: {b"x-toy-key": secret.encode(), b"authorization": None},
    key_headers=("x-toy-key",),
    # x-toy-ratelimit-{limit,remaining,reset}-{calls,words}
    counted_limits=re.compile(r"x-toy-ratelimit-(?P<field>limit|remaining|reset)-(?P<name>calls|words)"),
)


def read_usage(usage: Mapping[str, object]) -> Usage:
    suspect: dict[str, str] = {}
    cached = tokens(usage.get("cached", 0), "cached", suspect)
    total = tokens(usage.get("in"), "in", suspect)
    return Usage(
        input_tokens=None if total is None else total - (cached or 0),
        cache_read_tokens=cached,
        output_tokens=tokens(usage.get("out"), "out", suspect),
        suspect=suspect_text(suspect),
    )


def read_body(answer: Mapping[str, object]) -> Reading:
    reading = Reading(model=text(answer.get("model")), response_id=text(answer.get("id")))
    if isinstance(usage := answer.get("usage"), Mapping):
        reading.usage, reading.usage_seen = read_usage(usage), True
    return reading


class Events:
    def on_event(self, name: str | None, data: str, reading: Reading) -> bool:
        payload = json_object(data) or {}
        if name == "done":
            reading.model = text(payload.get("model"))
            if isinstance(usage := payload.get("usage"), Mapping):
                reading.usage, reading.usage_seen = read_usage(usage), True
            reading.complete = True
            return False
        return bool(payload.get("delta"))


def inject_system(body: JSONObject, blocks: Sequence[SystemBlock]) -> tuple[JSONObject, list[str], list[Any]]:
    present = body.get("instructions", [])
    if not isinstance(present, list):
        return body, [], []
    added = new_blocks(blocks, {item for item in present if isinstance(item, str)})
    if not added:
        return body, [], []
    return {**body, "instructions": [*present, *(b.text for b in added)]}, [b.name for b in added], []


COMPLETE = WireFormat(
    name="toy_complete",
    provider=TOY,
    path_suffixes=("/toy/v1/complete",),
    read_body=read_body,
    stream_events=Events,
    terminal_event="done",
    rule_set=frozenset({"alias", "system"}),
    inject_system=inject_system,
    output_fields=("limit",),
    body_parts=lambda answer: [Part("text", str(answer.get("text", "")))],
    messages_field="prompt",
    system_field="instructions",
)

register(COMPLETE)
