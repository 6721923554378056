"""Ends streams whose upstream has gone silent, with a proper error event instead of a hang.

A streamed call that receives no byte for `idle_timeout_s` (config, default 60 s; Anthropic sends `ping`
events well within that) is ended by sluice (addons/stream_end.py: an error record in the provider's own
format where the client can read one, then the stalled upstream connection closed). The call's row is
written with the partial usage and the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import http

from addons.calls import Call
from addons.core import SluiceCore
from addons.stream_end import end_stream

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
        end_stream(flow, call, 504, message, f"idle timeout after {limit:g}s")
