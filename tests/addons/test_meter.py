"""Meter: when a call's row is built, and that every answered call gets exactly one."""

from __future__ import annotations

import asyncio
import json

from mitmproxy.test import tflow, tutils

from addons.calls import Call
from addons.core import SluiceCore
from addons.meter import Meter
from state.writer import CallRecord

ANSWER = {
    "id": "msg_01",
    "type": "message",
    "model": "claude-sonnet-4-6",
    "content": [{"type": "text", "text": "hi"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 12, "output_tokens": 3},
}


class Records:
    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []

    def put(self, record: CallRecord) -> None:
        self.rows.append(record.row)


def answered(shown: bool) -> tuple[SluiceCore, Meter, Records, tflow.http.HTTPFlow]:
    core = SluiceCore()
    core.flows_shown = shown
    records = Records()
    core.writer = records  # type: ignore[assignment]
    meter = Meter(core)
    flow = tflow.tflow(
        req=tutils.treq(method=b"POST", path=b"/v1/messages", content=b"{}"),
        resp=tutils.tresp(content=json.dumps(ANSWER).encode()),
    )
    flow.live = True
    core.calls[flow.id] = Call(
        flow.id, "api.anthropic.com", "POST", "/v1/messages", "anthropic", "messages", 0.0
    )
    return core, meter, records, flow


def test_where_flows_are_seen_the_row_and_comment_are_there_when_the_response_leaves() -> None:
    async def hook() -> tuple[int, str]:
        _, meter, records, flow = answered(shown=True)
        meter.response(flow)
        return len(records.rows), flow.comment

    count, comment = asyncio.run(hook())
    assert count == 1 and comment.startswith("claude-sonnet-4-6 · in 12 · out 3")


def test_in_a_plain_mitmdump_the_row_is_built_once_the_response_has_left() -> None:
    async def hook() -> tuple[int, int, dict[str, object]]:
        _, meter, records, flow = answered(shown=False)
        meter.response(flow)
        during = len(records.rows)  # mitmproxy sends the response right after the hook returns
        await asyncio.sleep(0)
        return during, len(records.rows), records.rows[-1]

    during, after, row = asyncio.run(hook())
    assert (during, after) == (0, 1)
    assert (row["input_tokens"], row["output_tokens"], row["status"]) == (12, 3, 200)


def test_a_row_still_to_be_built_at_shutdown_is_built_then_and_only_once() -> None:
    async def hook() -> tuple[int, int]:
        core, meter, records, flow = answered(shown=False)
        meter.response(flow)
        for shutdown in core.shutdown_hooks:  # the loop may never run the scheduled build
            shutdown()
        at_shutdown = len(records.rows)
        await asyncio.sleep(0)  # and when it does, it finds nothing left to do
        return at_shutdown, len(records.rows)

    assert asyncio.run(hook()) == (1, 1)
