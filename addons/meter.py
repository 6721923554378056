"""Meters every LLM call: tees the response stream past the usage parser and writes one row per call.

Streams are never held back: the tee returns each chunk as it came (still content-encoded) and parses a
decoded copy. Whatever way a call ends — response complete, upstream or client gone mid-stream, proxy shut
down — it gets exactly one row, with the partial usage seen so far and what went wrong.

Bounded work for any body (addons/decoding.py): a compressed body is decoded only up to `sluice_decode_max`
bytes; past that it passes on untouched and unread, and the row says why. A stream's decoded copy is parsed
at most PARSE_PER_TURN bytes per turn of the event loop (the rest on later turns), and a whole body that is
compressed or large is decoded and parsed on a worker thread, so one flow never holds the loop for long.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from mitmproxy import ctx, http

from addons import event_frames  # noqa: F401 - registers the event-stream framing the meter reads
from addons.annotate import annotate
from addons.calls import Call, build_record, streamed_so_far
from addons.core import SluiceCore
from addons.decoding import (
    OFF_LOOP_BYTES,
    DecodeError,
    OverLimit,
    decode_body,
    is_encoded,
    make_decoder,
    set_decode_max,
)
from addons.fields import RATE_LIMIT_MARKER, header_values
from addons.stream_end import end_stream
from rules.providers import wire_format
from rules.stream_filter import SSERecordFilter
from rules.usage import Reading, StreamReader, is_stream_type, read_response_body
from state.writer import CallRecord

log = logging.getLogger("sluice")

_STREAM_HEADERS = frozenset({b"content-type", b"content-encoding"})
# Decoded stream bytes parsed per turn of the event loop: at worst (a flood of tiny events) ~3 ms of the
# usage parser. What one wire chunk decodes to beyond that is parsed on the following turns.
PARSE_PER_TURN = 64 * 1024


# A whole response's reading, and why its body was not read (None when it was).
type Buffered = tuple[Reading, str | None]

# Called with each finished call's record before it is queued and the flow annotated; may replace
# `record.row` with one carrying more columns (cache health).
type BeforeRecord = Callable[[http.HTTPFlow, Call, Reading, CallRecord], None]


class Meter:
    def __init__(self, core: SluiceCore, before_record: Sequence[BeforeRecord] = ()) -> None:
        self.core = core
        self.before_record = list(before_record)
        # Answered calls whose rows are built after their response left (see `response`), by flow id.
        self.deferred: dict[str, tuple[http.HTTPFlow, Call]] = {}
        # Streams whose decoded copy is still being parsed on later loop turns: resolved when it is done.
        self.parsing: dict[str, asyncio.Future[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        # Streams metered against what is left of a budget as they flow (`Call.stream_budget`), by flow id.
        self.capped: dict[str, http.HTTPFlow] = {}
        core.shutdown_hooks.append(self._finish_in_flight)

    def configure(self, updated: set[str]) -> None:
        if "sluice_decode_max" in updated:
            set_decode_max(ctx.options.sluice_decode_max)

    async def request(self, flow: http.HTTPFlow) -> None:
        call = self.core.calls.get(flow.id)
        if call is None:
            return
        raw = flow.request.raw_content or b""
        call.request_bytes = len(raw)
        if call.request_read:
            return
        encoding = flow.request.headers.get("content-encoding")
        if is_encoded(encoding) or len(raw) >= OFF_LOOP_BYTES:
            fields = await asyncio.to_thread(read_request_fields, raw, encoding)  # pure: safe on a thread
        else:
            fields = read_request_fields(raw, encoding)
        model, stream, note = fields
        if note is not None:
            call.notes.append(note)
            return
        call.request_model = model or call.request_model
        call.stream = stream

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = self.core.calls.get(flow.id)
        if call is None or flow.response is None or call.answered_locally:
            return
        call.headers_at = time.time()
        headers = header_values(flow.response.headers.fields, _STREAM_HEADERS)
        wire = wire_format(call.api)
        if not is_stream_type(wire, headers.get("content-type")):
            return
        call.stream = True
        watch = None
        if call.stream_budget is not None:
            self.capped[flow.id] = flow
            watch = functools.partial(_over_budget, call, call.stream_budget)
        call.reader = StreamReader(wire, watch=watch)
        encoding = headers.get("content-encoding", "")
        try:
            call.decoder = make_decoder(encoding)
        except ValueError as e:
            call.notes.append(f"usage not read: {e}")
            call.reader = None
        if self.core.keep_body > 0 and self.core.flows_shown:
            # A copy only where someone can see it (mitmweb, `-w`, printed bodies): a plain mitmdump keeps
            # none, as bare mitmproxy keeps no streamed body; a fleet's long answers are not held twice.
            call.body_copy = bytearray()
        flow.response.stream = self._tee(call, encoded=encoding.strip().lower() not in ("", "identity"))

    def _tee(self, call: Call, encoded: bool) -> Callable[[bytes], bytes | list[bytes]]:
        keep = self.core.keep_body
        # sluice asked for stream usage on the client's behalf: cut the extra chunk back out. Only on
        # bytes in the clear; an encoded stream passes whole (fails open).
        usage_only = wire_format(call.api).usage_only_chunk
        cut = (
            SSERecordFilter(usage_only)
            if usage_only is not None and not call.client_asked_usage and not encoded
            else None
        )

        def tee(chunk: bytes) -> bytes | list[bytes]:
            # b"" marks the end of the body. Never return b"" before then: on HTTP/1.1 an empty chunk
            # ends the chunked body early. An empty list emits nothing.
            if not chunk:
                return cut.close() if cut is not None else chunk
            if call.ended_by is not None:
                return []  # sluice ended the stream (addons/stream_end.py): nothing more reaches the client
            call.response_bytes += len(chunk)
            call.last_byte_at = time.monotonic()
            if call.body_copy is not None:
                if len(call.body_copy) + len(chunk) <= keep:
                    call.body_copy += chunk
                else:
                    call.body_copy = None
                    call.notes.append(f"streamed body over {keep} bytes not kept for display")
            if call.reader is not None and call.decoder is not None:
                call.decoder.feed(chunk)
                if call.flow_id not in self.parsing:  # else the scheduled turn gets to it, in order
                    self._parse(call)
                if call.ended_by is not None:
                    return []  # this chunk reached a budget: the stream has just been ended before it
            if cut is not None:
                passed = cut.feed(chunk)
                return passed if passed else []
            return chunk

        return tee

    def _parse(self, call: Call) -> None:
        """Feed the usage parser what the decoder holds, PARSE_PER_TURN bytes per turn of the event loop;
        the rest is scheduled for the next turn. The client's bytes never wait for this."""
        decoder = call.decoder
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # no loop to yield to (a direct call): parse it all now
        budget = PARSE_PER_TURN
        while call.reader is not None and decoder is not None and decoder.pending and not call.finished:
            if loop is not None and budget <= 0:
                if call.flow_id not in self.parsing:
                    self.parsing[call.flow_id] = loop.create_future()
                loop.call_soon(self._parse, call)  # one scheduled turn per flow at a time
                return
            try:
                data = decoder.read(PARSE_PER_TURN)
            except (OverLimit, DecodeError) as e:
                reason = f"body could not be decoded: {e}" if isinstance(e, DecodeError) else str(e)
                self._stop_reading(call, f"usage not read: {reason}")
                break
            if not data:
                break  # the input fed so far is used up (a coding may hold a partial block)
            budget -= len(data)
            try:
                if call.reader.feed(data) and call.first_output_at is None:
                    call.first_output_at = time.time()
            except Exception as e:  # a parser bug must never break the client's stream
                log.warning("sluice: flow %s: usage parser stopped: %r", call.flow_id, e)
                self._stop_reading(call, f"usage parser stopped: {e!r}")
            if call.reader is not None and call.reader.stopped:
                self._hold_to_budget(call)
        done = self.parsing.pop(call.flow_id, None)
        if done is not None and not done.done():
            done.set_result(None)

    def _hold_to_budget(self, call: Call) -> None:
        """End a stream whose cost so far has reached what was left of its budget (`Call.stream_budget`: its
        reader stopped at the event that reached it), with the provider's error event; its row is priced at
        that event (the output counted from the text it carried), which the budget settles at."""
        assert call.reader is not None and call.stream_budget is not None
        reading, cost = streamed_so_far(call, call.reader.reading)
        flow = self.capped.get(call.flow_id)
        if flow is None or cost is None or call.ended_by is not None:
            return
        message = (
            f"sluice: budget reached mid-stream for client {call.client}: this call could spend "
            f"${call.stream_budget:.4f}, what was left; the stream was ended"
        )
        log.info("sluice: flow %s: %s", call.flow_id, message)
        note = f"budget reached mid-stream (client {call.client}: ${call.stream_budget:.4f} left, "
        note += f"${cost:.4f} streamed)"
        end_stream(flow, call, 429, message, note)
        if call.reader is not None:
            reading = replace(reading, error=call.reader.reading.error or message)
        self.capped.pop(call.flow_id, None)
        call.final_reading = reading
        call.reader = None

    @staticmethod
    def _stop_reading(call: Call, note: str) -> None:
        call.notes.append(note)
        if call.reader is not None:
            call.final_reading = call.reader.reading
        call.reader = None

    async def response(self, flow: http.HTTPFlow) -> None:
        call = self.core.calls.get(flow.id)
        if call is None or call.finished or flow.response is None:
            self.core.calls.pop(flow.id, None)
            return
        parsing = self.parsing.get(flow.id)
        if parsing is not None:
            await asyncio.wait([parsing])  # the rest of the stream's decoded copy, parsed slice by slice
        if self.core.calls.pop(flow.id, None) is None or call.finished:
            return  # finished meanwhile (shutdown)
        if call.body_copy is not None and flow.response.raw_content is None:
            flow.response.raw_content = bytes(call.body_copy)
        buffered = _buffered_reading_needed(call, flow.response)
        if self.core.flows_shown:
            # The comment and marks must be on the flow as it leaves.
            if buffered and _off_loop(flow.response):
                reading = await asyncio.to_thread(_read_buffered, call.api, flow.response)
                self._finish_response(flow, call, reading)
            else:
                self._finish_response(flow, call)
            return
        # A plain mitmdump: no one sees the flow's comment or LLM view, so the row is built once the response
        # has left (this hook returns, mitmproxy sends it, then the loop runs what was scheduled meanwhile).
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._finish_response(flow, call)
            return
        self.deferred[flow.id] = (flow, call)
        if buffered and _off_loop(flow.response):
            task = loop.create_task(self._finish_off_loop(flow.id))
            self.tasks.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self.tasks.discard)
        else:
            loop.call_soon(self._finish_deferred, flow.id)

    async def _finish_off_loop(self, flow_id: str) -> None:
        deferred = self.deferred.get(flow_id)
        if deferred is None or deferred[0].response is None:
            return
        flow, call = deferred
        reading = await asyncio.to_thread(_read_buffered, call.api, flow.response)
        if self.deferred.pop(flow_id, None) is not None:  # not finished at shutdown meanwhile
            self._finish_response(flow, call, reading)

    def _finish_deferred(self, flow_id: str) -> None:
        deferred = self.deferred.pop(flow_id, None)
        if deferred is not None:
            self._finish_response(*deferred)

    def _finish_response(self, flow: http.HTTPFlow, call: Call, buffered: Buffered | None = None) -> None:
        response = flow.response
        if call.reader is not None:
            reading = call.reader.finish()
        elif call.final_reading is not None:
            reading = call.final_reading
        elif response is None or response.stream:
            reading = Reading()
        else:
            call.response_bytes = len(response.raw_content or b"")
            reading, note = buffered if buffered is not None else _read_buffered(call.api, response)
            if note is not None:
                call.notes.append(note)
        self._finish(flow, call, reading, error=None)

    def error(self, flow: http.HTTPFlow) -> None:
        call = self.core.calls.pop(flow.id, None)
        if call is None or call.finished:
            return
        reading = call.reader.reading if call.reader is not None else (call.final_reading or Reading())
        if flow.response is not None and call.body_copy is not None and flow.response.raw_content is None:
            flow.response.raw_content = bytes(call.body_copy)
        message = flow.error.msg if flow.error else "connection lost"
        if flow.server_conn.timestamp_tcp_setup is None and flow.client_conn.timestamp_end is None:
            # Never connected while the client still waits: the upstream could not be reached at all.
            self._finish(flow, call, reading, error=f"upstream unreachable: {message}")
            return
        if reading.complete or reading.error:
            # The provider had already finished, or already said what went wrong (an in-stream error
            # event, on which SDKs hang up at once): its word is the call's outcome, not the hang-up.
            call.notes.append(f"connection closed after the final event: {message}")
            self._finish(flow, call, reading, error=None)
        else:
            self._finish(flow, call, reading, error=f"connection lost: {message}")

    def _finish(self, flow: http.HTTPFlow, call: Call, reading: Reading, error: str | None) -> None:
        call.finished = True
        self.capped.pop(call.flow_id, None)
        response = flow.response
        rate_limits: list[tuple[str, str]] = []
        ids: dict[str, str] = {}
        if response is not None:
            for raw_name, raw_value in response.headers.fields:
                name = raw_name.decode("utf-8", "surrogateescape").lower()
                if RATE_LIMIT_MARKER in name:
                    rate_limits.append((name, raw_value.decode("utf-8", "surrogateescape")))
                elif name in ("request-id", "x-request-id"):
                    ids.setdefault(name, raw_value.decode("utf-8", "surrogateescape"))
        request_id = ids.get("request-id") or ids.get("x-request-id")
        ended = (response.timestamp_end if response is not None else None) or time.time()
        record = build_record(
            call,
            reading,
            status=response.status_code if response is not None else None,
            error=error,
            request_id=request_id,
            rate_limits=rate_limits,
            headers_at=call.headers_at,
            ended=ended,
            budget_without_usage=self.core.config.budget_without_usage,
        )
        for hook in self.before_record:
            try:
                hook(flow, call, reading, record)
            except Exception as e:  # an observer must not cost the call its row
                log.warning("sluice: flow %s: %r failed: %r", call.flow_id, hook, e)
        self.core.record(record)
        annotate(flow, record.row, self.core.marks)

    def _finish_in_flight(self) -> None:
        for flow_id in list(self.deferred):
            self._finish_deferred(flow_id)
        for call in list(self.core.calls.values()):
            if not call.finished:
                call.finished = True
                reading = call.reader.reading if call.reader is not None else Reading()
                record = build_record(
                    call,
                    reading,
                    status=None,
                    error="proxy shut down while the call was in flight",
                    request_id=None,
                    rate_limits=[],
                    headers_at=call.headers_at,
                    ended=time.time(),
                    budget_without_usage=self.core.config.budget_without_usage,
                )
                self.core.record(record)
        self.core.calls.clear()


def read_request_fields(raw: bytes, content_encoding: str | None) -> tuple[str | None, bool, str | None]:
    """(model, stream, None) as the request states them, or (None, False, why not). Fails open: the call is
    still metered. Pure (no flow): runs on a worker thread for a large or compressed body."""
    decoded = decode_body(raw, content_encoding)
    if decoded.body is None:
        return None, False, f"request body not read: {decoded.reason}"
    try:
        body = json.loads(decoded.body or b"")
    except RecursionError:
        return None, False, "request body nests too deeply"
    except (ValueError, UnicodeDecodeError):
        return None, False, "request body is not JSON"
    if not isinstance(body, dict):
        return None, False, None
    model = body.get("model")
    return (model if isinstance(model, str) else None), body.get("stream") is True, None


def _over_budget(call: Call, budget: float, reading: Reading) -> bool:
    """Whether a stream's cost so far has reached `budget` (StreamReader's `watch`, after each event)."""
    cost = streamed_so_far(call, reading)[1]
    return cost is not None and cost >= budget


def _buffered_reading_needed(call: Call, response: http.Response) -> bool:
    return call.reader is None and call.final_reading is None and not response.stream


def _off_loop(response: http.Response) -> bool:
    return is_encoded(response.headers.get("content-encoding")) or len(response.raw_content or b"") >= (
        OFF_LOOP_BYTES
    )


def _read_buffered(api: str, response: http.Response) -> Buffered:
    """What a whole response says, and why it was not read: a body over the decode cap or not decodable
    is left unread. Pure (reads the response only): runs on a worker thread for a large or compressed body."""
    decoded = decode_body(response.raw_content or b"", response.headers.get("content-encoding"))
    status = response.status_code
    if decoded.body is None:
        return Reading(error=f"HTTP {status}" if status >= 400 else None), f"usage not read: {decoded.reason}"
    return read_response_body(wire_format(api), decoded.body, status), None
