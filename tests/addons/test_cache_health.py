from __future__ import annotations

import asyncio
import json
from typing import Any

from mitmproxy.test import tflow, tutils

from addons.cache_health import CacheHealth
from addons.calls import Call, build_record
from addons.changes import METADATA_KEY
from addons.core import SluiceCore
from rules.rewrite import parse_json
from rules.usage import Reading, Usage

T0 = 1_800_000_000.0


def body(turns: int, system: str = "You are Claude.") -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for n in range(turns):
        if n:
            messages.append({"role": "assistant", "content": f"answer {n}"})
        block: dict[str, Any] = {"type": "text", "text": f"question {n}"}
        if n == turns - 1:
            block["cache_control"] = {"type": "ephemeral"}
        messages.append({"role": "user", "content": [block]})
    return {
        "model": "claude-sonnet-4-5",
        "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
        "messages": messages,
    }


class Harness:
    def __init__(self, max_conversations: int = 100) -> None:
        self.core = SluiceCore()
        self.health = CacheHealth(self.core, max_conversations)

    def in_flight(self, request: dict[str, Any]) -> tuple[tflow.http.HTTPFlow, Call]:
        """A live flow and its call, as the rewrite step leaves them, before any hook of this addon."""
        flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/v1/messages", content=b"{}"))
        flow.live = True
        call = Call(flow.id, "api.anthropic.com", "POST", "/v1/messages", "anthropic", "messages", T0)
        call.request_json = parse_json(json.dumps(request))
        self.core.calls[flow.id] = call
        return flow, call

    async def send(self, flow: tflow.http.HTTPFlow) -> None:
        """The request hook, then the response's headers, as mitmproxy calls them."""
        self.health.request(flow)
        await asyncio.sleep(0)  # the request is on its way
        flow.response = tutils.tresp()
        await self.health.responseheaders(flow)

    def call(
        self,
        request: dict[str, Any],
        *,
        read: int = 0,
        write: int = 0,
        started: float = T0,
        session: str | None = "session-1",
        credential: str = "keys[0]",
        status: int = 200,
        usage_seen: bool = True,
    ) -> tuple[dict[str, Any], tflow.http.HTTPFlow]:
        flow = tflow.tflow(
            req=tutils.treq(method=b"POST", path=b"/v1/messages", content=json.dumps(request).encode())
        )
        flow.live = True
        call = Call(flow.id, "api.anthropic.com", "POST", "/v1/messages", "anthropic", "messages", started)
        call.session_id, call.credential, call.request_model = session, credential, request.get("model")
        call.request_json = parse_json(json.dumps(request))  # what the rewrite step leaves on the call
        self.core.calls[flow.id] = call
        asyncio.run(self.send(flow))
        reading = Reading(
            model="claude-sonnet-4-5",
            usage=Usage(
                input_tokens=10, cache_read_tokens=read, cache_write_5m_tokens=write, output_tokens=5
            ),
            usage_seen=usage_seen,
            complete=True,
        )
        record = build_record(
            call,
            reading,
            status=status,
            error=None,
            request_id=None,
            rate_limits=[],
            headers_at=None,
            ended=started,
        )
        self.health.before_record(flow, call, reading, record)
        self.health.response(flow)
        return dict(record.row), flow


def test_a_conversation_that_stops_reading_its_cache_is_flagged() -> None:
    h = Harness()
    first, _ = h.call(body(1), write=2000)
    second, _ = h.call(body(2), read=2000, write=30, started=T0 + 10)
    third, flow = h.call(body(3, system="You are Claude. It is 10:02."), started=T0 + 20, write=2100)
    assert [row["cache_status"] for row in (first, second, third)] == ["write", "hit", "miss"]
    assert third["cache_note"] == "prefix changed at system[0]"
    assert flow.metadata[METADATA_KEY] == {"cache": {"status": "miss", "note": "prefix changed at system[0]"}}
    assert h.health.pending == {}


def test_conversations_are_kept_apart_and_forgotten_least_recent_first() -> None:
    h = Harness(max_conversations=2)
    h.call(body(1), write=2000, session="a")
    h.call(body(1), write=2000, session="b")
    h.call(body(1), write=2000, session="c")  # pushes "a" out
    assert len(h.health.conversations) == 2
    forgotten, _ = h.call(body(2), started=T0 + 5, session="a")
    remembered, _ = h.call(body(2), started=T0 + 5, session="c")
    assert (forgotten["cache_status"], remembered["cache_status"]) == ("none", "miss")


def test_a_failed_call_is_not_judged_and_does_not_count_as_the_last_turn() -> None:
    h = Harness()
    h.call(body(1), write=2000)
    failed, flow = h.call(body(2), status=529, usage_seen=False, started=T0 + 5)
    assert failed.get("cache_status") is None and METADATA_KEY not in flow.metadata
    retried, _ = h.call(body(2), started=T0 + 400)
    assert retried["cache_note"] == "TTL expired (6m40s since the previous call; cache TTL 5m)"


def test_count_tokens_and_unreadable_bodies_are_left_alone() -> None:
    h = Harness()
    flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/v1/messages", content=b"not json"))
    flow.live = True
    h.core.calls[flow.id] = Call(flow.id, "h", "POST", "/v1/messages", "anthropic", "messages", T0)
    asyncio.run(h.send(flow))
    counted = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/v1/messages/count_tokens", content=b"{}"))
    counted.live = True
    h.core.calls[counted.id] = Call(
        counted.id, "h", "POST", "/v1/messages/count_tokens", "anthropic", "count_tokens", T0
    )
    asyncio.run(h.send(counted))
    assert h.health.pending == {}


def test_the_shape_is_read_after_the_request_hook_and_awaited_by_the_response_headers() -> None:
    h = Harness()
    flow, _ = h.in_flight(body(2))

    async def hooks() -> tuple[bool, bool]:
        h.health.request(flow)
        read_in_the_hook = h.health.pending[flow.id].done()
        flow.response = tutils.tresp()
        await h.health.responseheaders(flow)  # at once: no turn of the loop in between
        return read_in_the_hook, h.health.pending[flow.id].done()

    assert asyncio.run(hooks()) == (False, True)


def test_a_shape_that_cannot_be_read_leaves_the_call_unjudged_and_nothing_waiting(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import addons.cache_health as addon

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(addon, "read_prompt_shape", broken)
    h = Harness()
    row, flow = h.call(body(1), write=2000)
    assert row.get("cache_status") is None and METADATA_KEY not in flow.metadata
    assert h.health.pending == {}


def test_a_call_that_fails_before_its_response_is_not_judged() -> None:
    h = Harness()
    flow, call = h.in_flight(body(1))

    async def request_only() -> None:
        h.health.request(flow)  # and the connection drops before the shape was read

    asyncio.run(request_only())
    record = build_record(
        call,
        Reading(),
        status=None,
        error="connection lost",
        request_id=None,
        rate_limits=[],
        headers_at=None,
        ended=T0,
    )
    h.health.before_record(flow, call, Reading(), record)
    h.health.error(flow)
    assert record.row.get("cache_status") is None and h.health.pending == {}
