"""Ends streams whose upstream has gone silent, with a proper error event instead of a hang.

A streamed call that receives no byte for `idle_timeout_s` (config, default 60 s; Anthropic sends `ping`
events well within that) is ended by sluice. When the client reads an HTTP/1.1 chunked body in the clear
(no content-encoding), it is sent an `error` record in the provider's own format and the last chunk, so its
SDK raises its normal stream error; then the stalled upstream connection is closed. Otherwise (HTTP/2
client, compressed stream) only the upstream is closed and the client sees the stream cut. The call's row
is written either way, with the partial usage and the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import http

from addons import mitm_internals
from addons.calls import Call
from addons.core import SluiceCore
from rules.providers import wire_format

log = logging.getLogger("sluice")


class Watchdog:
    def __init__(self, core: SluiceCore) -> None:
        self.core = core
        # Streams watched, by flow id: the flow, and when its headers came (idle from then to a first byte).
        self.flows: dict[str, tuple[http.HTTPFlow, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def running(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="sluice idle watchdog")

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        call = self.core.calls.get(flow.id)
        if call is not None and call.reader is not None:  # the meter reads the stream (it runs before)
            self.flows[flow.id] = (flow, time.monotonic())

    def response(self, flow: http.HTTPFlow) -> None:
        self.flows.pop(flow.id, None)

    def error(self, flow: http.HTTPFlow) -> None:
        self.flows.pop(flow.id, None)

    async def _watch(self) -> None:
        while True:
            limit = self.core.config.idle_timeout_s
            await asyncio.sleep(min(1.0, limit / 4))
            now = time.monotonic()
            for flow_id, (flow, since) in list(self.flows.items()):
                call = self.core.calls.get(flow_id)
                if call is None or call.finished:
                    self.flows.pop(flow_id, None)
                elif now - max(since, call.last_byte_at or since) > limit:
                    self.flows.pop(flow_id, None)
                    try:
                        await self._end(flow, call, limit)
                    except Exception as e:  # the watchdog must outlive any one flow
                        log.warning("sluice: flow %s: could not end the idle stream: %r", flow_id, e)

    async def _end(self, flow: http.HTTPFlow, call: Call, limit: float) -> None:
        message = f"sluice: the upstream sent nothing for {limit:g}s; the stream was ended"
        log.warning("sluice: flow %s: %s", flow.id, message)
        call.notes.append(f"idle timeout after {limit:g}s")
        call.ended_by = message
        live = mitm_internals.proxy_connection(flow.client_conn)
        if live is None:
            return
        if _can_end_cleanly(flow):
            # A blank line first closes any half-sent SSE record (binary frames have no such thing); the
            # error record; then the last chunk.
            wire = wire_format(call.api)
            record = (b"\n\n" if wire.stream_framing == "sse" else b"") + wire.provider.sse_error_event(
                504, message
            )
            if call.reader is not None:
                call.reader.feed(record)
            chunks = f"{len(record):x}\r\n".encode() + record + b"\r\n0\r\n\r\n"
            live.send_to_client(flow.client_conn, chunks)
        live.close_server(flow.server_conn)


def _can_end_cleanly(flow: http.HTTPFlow) -> bool:
    """The client reads an HTTP/1.1 chunked body in the clear: an error record and a last chunk fit."""
    response = flow.response
    return (
        response is not None
        and flow.request.http_version == "HTTP/1.1"
        and "chunked" in response.headers.get("transfer-encoding", "").lower()
        and not response.headers.get("content-encoding")
    )
