"""Meters every LLM call: tees the response stream past the usage parser and writes one row per call.

Streams are never held back: the tee returns each chunk as it came (still content-encoded) and parses a
decoded copy. Whatever way a call ends — response complete, upstream or client gone mid-stream, proxy shut
down — it gets exactly one row, with the partial usage seen so far and what went wrong.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence

from mitmproxy import http

from addons.annotate import annotate
from addons.calls import Call, build_record
from addons.core import SluiceCore, destination
from addons.decoding import make_decoder
from addons.fields import header_values
from rules.clients import presented_key
from rules.endpoints import classify
from rules.rewrite import is_usage_only_chunk
from rules.stream_filter import SSERecordFilter
from rules.usage import Reading, StreamReader, read_response_body
from state.credentials import fingerprint
from state.writer import CallRecord

log = logging.getLogger("sluice")

RATE_LIMIT_MARKER = "ratelimit"  # anthropic-ratelimit-*, anthropic-ratelimit-unified-*, x-ratelimit-*
_STREAM_HEADERS = frozenset({b"content-type", b"content-encoding"})


def call_for(core: SluiceCore, flow: http.HTTPFlow) -> Call | None:
    """The call record of a flow, created on first sight of a metered LLM request."""
    call = core.calls.get(flow.id)
    if call is None and flow.live:
        endpoint = classify(flow.request.method, flow.request.path)
        if endpoint is not None:
            headers = header_values(flow.request.headers.fields)
            call = Call(
                flow_id=flow.id,
                host=destination(flow).authority,  # where it really went, not its Host header
                method=flow.request.method,
                path=flow.request.path.split("?", 1)[0],
                provider=endpoint.provider,
                api=endpoint.api,
                started=flow.request.timestamp_start,
                session_id=headers.get("x-claude-code-session-id"),
                credential=_presented_credential(headers),
                request_headers=headers,
            )
            core.calls[flow.id] = call
    return call


def _presented_credential(headers: dict[str, str]) -> str:
    key = presented_key(headers)
    return fingerprint(key) if key else "none"


# Called with each finished call's record before it is queued and the flow annotated; may replace
# `record.row` with one carrying more columns (cache health).
type BeforeRecord = Callable[[http.HTTPFlow, Call, Reading, CallRecord], None]


class Meter:
    def __init__(self, core: SluiceCore, before_record: Sequence[BeforeRecord] = ()) -> None:
        self.core = core
        self.before_record = list(before_record)
        # Answered calls whose rows are built after their response left (see `response`), by flow id.
        self.deferred: dict[str, tuple[http.HTTPFlow, Call]] = {}
        core.shutdown_hooks.append(self._finish_in_flight)

    def request(self, flow: http.HTTPFlow) -> None:
        call = call_for(self.core, flow)
        if call is None:
            return
        raw = flow.request.raw_content or b""
        call.request_bytes = len(raw)
        call.answered_locally = flow.response is not None
        if not call.request_read:
            _read_request_fields(call, flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = self.core.calls.get(flow.id)
        if call is None or flow.response is None or call.answered_locally:
            return
        call.headers_at = time.time()
        headers = header_values(flow.response.headers.fields, _STREAM_HEADERS)
        if not headers.get("content-type", "").startswith("text/event-stream"):
            return
        call.stream = True
        call.reader = StreamReader(call.api)
        encoding = headers.get("content-encoding", "")
        try:
            call.decoder = make_decoder(encoding)
        except ValueError as e:
            call.notes.append(f"usage not read: {e}")
            call.reader = None
        if self.core.keep_body > 0:
            call.body_copy = bytearray()
        flow.response.stream = self._tee(call, encoded=encoding.strip().lower() not in ("", "identity"))

    def _tee(self, call: Call, encoded: bool) -> Callable[[bytes], bytes | list[bytes]]:
        keep = self.core.keep_body
        # sluice asked for stream usage on the client's behalf: cut the extra chunk back out. Only on
        # bytes in the clear; an encoded stream passes whole (fails open).
        cut = SSERecordFilter(is_usage_only_chunk) if not call.client_asked_usage and not encoded else None

        def tee(chunk: bytes) -> bytes | list[bytes]:
            # b"" marks the end of the body. Never return b"" before then: on HTTP/1.1 an empty chunk
            # ends the chunked body early. An empty list emits nothing.
            if not chunk:
                return cut.close() if cut is not None else chunk
            call.response_bytes += len(chunk)
            call.last_byte_at = time.monotonic()
            if call.body_copy is not None:
                if len(call.body_copy) + len(chunk) <= keep:
                    call.body_copy += chunk
                else:
                    call.body_copy = None
                    call.notes.append(f"streamed body over {keep} bytes not kept for display")
            if call.reader is not None:
                try:
                    data = call.decoder.decode(chunk) if call.decoder is not None else chunk
                    if call.reader.feed(data) and call.first_output_at is None:
                        call.first_output_at = time.time()
                except Exception as e:  # a parser bug must never break the client's stream
                    log.warning("sluice: flow %s: usage parser stopped: %r", call.flow_id, e)
                    call.notes.append(f"usage parser stopped: {e!r}")
                    call.final_reading = call.reader.reading
                    call.reader = None
            if cut is not None:
                passed = cut.feed(chunk)
                return passed if passed else []
            return chunk

        return tee

    def response(self, flow: http.HTTPFlow) -> None:
        call = self.core.calls.pop(flow.id, None)
        if call is None or call.finished or flow.response is None:
            return
        if call.body_copy is not None and flow.response.raw_content is None:
            flow.response.raw_content = bytes(call.body_copy)
        if self.core.flows_shown:
            self._finish_response(flow, call)  # the comment and marks must be on the flow as it leaves
            return
        # A plain mitmdump: no one sees the flow's comment or LLM view, so the row is built once the response
        # has left (this hook returns, mitmproxy sends it, then the loop runs what was scheduled meanwhile).
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._finish_response(flow, call)
            return
        self.deferred[flow.id] = (flow, call)
        loop.call_soon(self._finish_deferred, flow.id)

    def _finish_deferred(self, flow_id: str) -> None:
        deferred = self.deferred.pop(flow_id, None)
        if deferred is not None:
            self._finish_response(*deferred)

    def _finish_response(self, flow: http.HTTPFlow, call: Call) -> None:
        response = flow.response
        if call.reader is not None:
            reading = call.reader.finish()
        elif call.final_reading is not None:
            reading = call.final_reading
        elif response is None or response.stream:
            reading = Reading()
        else:
            call.response_bytes = len(response.raw_content or b"")
            reading = _read_buffered(call.api, response)
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
        annotate(flow, record.row)

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


def _read_request_fields(call: Call, flow: http.HTTPFlow) -> None:
    """Model and stream flag as the request states them; fails open (the call is still metered)."""
    try:
        body = json.loads(flow.request.get_content(strict=False) or b"")
    except (ValueError, UnicodeDecodeError):
        call.notes.append("request body is not JSON")
        return
    if isinstance(body, dict):
        model = body.get("model")
        call.request_model = model if isinstance(model, str) else None
        call.stream = body.get("stream") is True


def _read_buffered(api: str, response: http.Response) -> Reading:
    try:
        body = response.content or b""
    except ValueError as e:  # undecodable content-encoding
        return Reading(error=f"response body could not be decoded: {e}")
    return read_response_body(api, body, response.status_code)
