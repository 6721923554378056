"""Meter: when a call's row is built, and that every answered call gets exactly one."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Iterator

import pytest
from mitmproxy.test import taddons, tflow, tutils

from addons.calls import Call
from addons.core import SluiceCore
from addons.decoding import DEFAULT_DECODE_MAX, decode_max, set_decode_max
from addons.meter import PARSE_PER_TURN, Meter, read_request_fields
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


@pytest.fixture(autouse=True)
def mitmproxy_context() -> Iterator[None]:
    """The options a running mitmproxy would have (`sluice_marks`, read when a row is built): without it
    these tests passed only after another module had set up a context."""
    with taddons.context():
        yield


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
        await meter.response(flow)
        return len(records.rows), flow.comment

    count, comment = asyncio.run(hook())
    assert count == 1 and comment.endswith("· in 12 · out 3 · claude-sonnet-4-6")


def test_in_a_plain_mitmdump_the_row_is_built_once_the_response_has_left() -> None:
    async def hook() -> tuple[int, int, dict[str, object]]:
        _, meter, records, flow = answered(shown=False)
        await meter.response(flow)
        during = len(records.rows)  # mitmproxy sends the response right after the hook returns
        await asyncio.sleep(0)
        return during, len(records.rows), records.rows[-1]

    during, after, row = asyncio.run(hook())
    assert (during, after) == (0, 1)
    assert (row["input_tokens"], row["output_tokens"], row["status"]) == (12, 3, 200)


def test_a_row_still_to_be_built_at_shutdown_is_built_then_and_only_once() -> None:
    async def hook() -> tuple[int, int]:
        core, meter, records, flow = answered(shown=False)
        await meter.response(flow)
        for shutdown in core.shutdown_hooks:  # the loop may never run the scheduled build
            shutdown()
        at_shutdown = len(records.rows)
        await asyncio.sleep(0)  # and when it does, it finds nothing left to do
        return at_shutdown, len(records.rows)

    assert asyncio.run(hook()) == (1, 1)


# --- bounded work for any body ----------------------------------------------------------------------------

CAP = 1024 * 1024


def _gzip_bomb(prefix: bytes = b"", size: int = 64 * 1024 * 1024) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(prefix)]
    block = bytes(1024 * 1024)
    for _ in range(size // len(block)):
        parts.append(compressor.compress(block))
    return b"".join([*parts, compressor.flush()])


def test_a_response_over_the_decode_cap_is_passed_on_unread_and_the_row_says_why() -> None:
    async def hook() -> tuple[dict[str, object], bytes]:
        set_decode_max(CAP)
        _, meter, records, flow = answered(shown=True)
        wire = _gzip_bomb(b'{"type":"message","usage":{"input_tokens":1,"output_tokens":1},"x":"')
        flow.response.headers["content-encoding"] = "gzip"
        flow.response.raw_content = wire
        await meter.response(flow)
        return records.rows[-1], flow.response.raw_content

    try:
        row, body = asyncio.run(hook())
    finally:
        set_decode_max(DEFAULT_DECODE_MAX)
    assert body is not None and body.startswith(b"\x1f\x8b")  # the wire bytes, never replaced
    assert f"note:usage not read: decoded body over {CAP} bytes" in json.loads(str(row["rules_applied"]))
    assert row["input_tokens"] is None and row["status"] == 200


def test_a_compressed_response_within_the_cap_is_read() -> None:
    async def hook() -> dict[str, object]:
        _, meter, records, flow = answered(shown=False)
        flow.response.headers["content-encoding"] = "gzip"
        flow.response.raw_content = gzip.compress(json.dumps(ANSWER).encode())
        await meter.response(flow)
        while not records.rows:  # decoded on a worker thread once the response has left
            await asyncio.sleep(0.01)
        return records.rows[-1]

    row = asyncio.run(hook())
    assert (row["input_tokens"], row["output_tokens"]) == (12, 3)


def _streamed(meter: Meter, core: SluiceCore, encoding: str) -> tuple[tflow.http.HTTPFlow, Call]:
    flow = tflow.tflow(
        req=tutils.treq(method=b"POST", path=b"/v1/messages", content=b"{}"),
        resp=tutils.tresp(
            content=None,
            headers=((b"content-type", b"text/event-stream"), (b"content-encoding", encoding.encode())),
        ),
    )
    flow.live = True
    call = Call(flow.id, "api.anthropic.com", "POST", "/v1/messages", "anthropic", "messages", 0.0)
    core.calls[flow.id] = call
    with taddons.context(core):  # the options (sluice_keep_body)
        meter.responseheaders(flow)
    return flow, call


PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def test_a_stream_chunk_that_decodes_to_much_is_parsed_a_slice_per_loop_turn() -> None:
    async def hook() -> tuple[int, list[str], bytes]:
        core, meter, records, _ = answered(shown=True)
        flow, call = _streamed(meter, core, "gzip")
        assert flow.response is not None and callable(flow.response.stream)
        payload = PING * (8 * PARSE_PER_TURN // len(PING))
        wire = gzip.compress(payload)
        passed = flow.response.stream(wire)
        assert passed == wire  # the client's bytes go on at once, as they came
        assert flow.id in meter.parsing  # the rest of the decoded copy waits for later turns
        flow.response.stream(b"")
        await meter.response(flow)
        return len(records.rows), call.notes, passed

    count, notes, _ = asyncio.run(hook())
    assert count == 1 and notes == []


def test_a_stream_over_the_decode_cap_still_reaches_the_client_and_the_row_says_why() -> None:
    async def hook() -> tuple[dict[str, object], int]:
        set_decode_max(CAP)
        core, meter, records, _ = answered(shown=True)
        flow, _ = _streamed(meter, core, "gzip")
        assert flow.response is not None and callable(flow.response.stream)
        wire = _gzip_bomb(PING * 10)
        sent = 0
        for index in range(0, len(wire), 16 * 1024):
            piece = wire[index : index + 16 * 1024]
            passed = flow.response.stream(piece)
            assert passed == piece
            sent += len(piece)
        flow.response.stream(b"")
        await meter.response(flow)
        return records.rows[-1], sent

    try:
        row, sent = asyncio.run(hook())
    finally:
        set_decode_max(DEFAULT_DECODE_MAX)
    assert row["response_bytes"] == sent
    assert f"note:usage not read: decoded body over {CAP} bytes" in json.loads(str(row["rules_applied"]))


def test_request_fields_of_a_compressed_body_are_read_within_the_cap() -> None:
    body = json.dumps({"model": "claude-x", "stream": True}).encode()
    assert read_request_fields(gzip.compress(body), "gzip") == ("claude-x", True, None)
    before = decode_max()
    set_decode_max(CAP)
    try:
        assert read_request_fields(_gzip_bomb(body[:-1]), "gzip") == (
            None,
            False,
            f"request body not read: decoded body over {CAP} bytes",
        )
    finally:
        set_decode_max(before)
    deep = b"[" * 100_000 + b"]" * 100_000
    assert read_request_fields(deep, None) == (None, False, "request body nests too deeply")
    assert read_request_fields(b"not json", None) == (None, False, "request body is not JSON")


@pytest.mark.parametrize("shown", [True, False])
def test_a_streamed_body_is_kept_only_where_someone_can_see_it(shown: bool) -> None:
    async def hook() -> tuple[bytes | None, dict[str, object]]:
        core, meter, records, _ = answered(shown=shown)
        flow, _ = _streamed(meter, core, "identity")
        assert flow.response is not None and callable(flow.response.stream)
        assert flow.response.stream(PING * 3) == PING * 3  # the client gets every byte either way
        flow.response.stream(b"")
        await meter.response(flow)
        await asyncio.sleep(0)  # a plain mitmdump builds the row once the response has left
        return flow.response.raw_content, records.rows[-1]

    kept, row = asyncio.run(hook())
    assert kept == (PING * 3 if shown else None)  # mitmweb, -w: the answer is on the flow; mitmdump: none
    assert row["response_bytes"] == len(PING * 3)
