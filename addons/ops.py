"""The ops feed: hands every finished call, and the shared state read now and then, to the ops parts
(metrics, tracing, alerts) on a thread of its own, off the request path.

A call's row is handed over as it is queued for the database (the meter's `before_record`): the hook only
puts a reference on a bounded queue (~1 µs). The feed thread turns it into counters, a span, alert
checks. Every `sluice_ops_poll_ms` it also reads the state every process shares — the credential pool,
OAuth expiry, the latest rate-limit headers, budgets — and the writer's backlog, for the gauges and the
alerts. When the queue is full (the thread cannot keep up), a call is left out of the ops view and
counted (`sluice_ops_dropped_total`), never waited for: the database row is still written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mitmproxy import ctx, exceptions, http

from addons.calls import Call
from addons.core import SluiceCore
from rules.usage import Reading
from state.ops import OpsReader, Snapshot
from state.writer import CallRecord

log = logging.getLogger("sluice")

QUEUE_MAX = 10_000
DEFAULT_POLL_MS = 5_000
_STOP = object()


@dataclass(frozen=True, slots=True)
class Finished:
    """One finished call as the ops parts see it: its row, and what the row does not hold."""

    row: Any  # the `calls` row (a mapping), shared with the writer: read only
    request_model: str | None
    response_model: str | None
    traceparent: str | None
    tracestate: str | None
    started: float  # epoch seconds
    request_json: Any  # the body as it went upstream (for opted-in content export), else None


@dataclass(frozen=True, slots=True)
class Backlog:
    queued: int  # records waiting for the writer thread
    held: int  # records held in memory because the database refuses them


class Sink(Protocol):
    @property
    def enabled(self) -> bool: ...

    @property
    def wants_snapshot(self) -> bool: ...

    def on_call(self, finished: Finished) -> None: ...

    def on_snapshot(self, snapshot: Snapshot, backlog: Backlog) -> None: ...

    def close(self) -> None: ...


class OpsFeed:
    def __init__(self, core: SluiceCore, sinks: Sequence[Sink]) -> None:
        self.core = core
        self.sinks = list(sinks)
        self.queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_MAX)
        self.dropped = 0
        self.polls = 0  # snapshots read so far: how fresh the gauges and state alerts are
        self.thread: threading.Thread | None = None
        self.poll_s = DEFAULT_POLL_MS / 1000
        self.db_path: str | None = None
        self.keep_content = False
        self._active = False  # a sink is on: before_record queues calls

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "sluice_ops_poll_ms",
            int,
            DEFAULT_POLL_MS,
            "How often the metrics and alerts re-read the credential pool, quotas and budgets (ms).",
        )

    def configure(self, updated: set[str]) -> None:
        if "sluice_ops_poll_ms" in updated:
            if ctx.options.sluice_ops_poll_ms < 50:
                raise exceptions.OptionsError(
                    f"sluice_ops_poll_ms: at least 50 ms, got {ctx.options.sluice_ops_poll_ms}"
                )
            self.poll_s = ctx.options.sluice_ops_poll_ms / 1000
        self.db_path = ctx.options.sluice_db
        self.keep_content = bool(getattr(ctx.options, "sluice_otlp_content", False))
        self._active = any(sink.enabled for sink in self.sinks)
        if self._active and self.thread is None:
            self.thread = threading.Thread(target=self._run, name="sluice-ops", daemon=True)
            self.thread.start()

    def before_record(self, flow: http.HTTPFlow, call: Call, reading: Reading, record: CallRecord) -> None:
        """The meter's hook, as each call's row is queued: only a queue put, whatever the parts do."""
        if not self._active:
            return
        headers = call.request_headers
        finished = Finished(
            row=record.row,
            request_model=call.request_model,
            response_model=reading.model,
            traceparent=headers.get("traceparent"),
            tracestate=headers.get("tracestate"),
            started=call.started,
            request_json=call.request_json if self.keep_content else None,
        )
        try:
            self.queue.put_nowait(finished)
        except queue.Full:
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 10_000 == 0:
                log.warning(
                    "sluice: ops: the metrics/tracing thread is behind; %d calls left out", self.dropped
                )

    def backlog(self) -> Backlog:
        writer = self.core.writer
        queued, held = writer.backlog() if writer is not None else (0, 0)
        return Backlog(queued, held)

    def _run(self) -> None:
        reader: OpsReader | None = None
        next_poll = 0.0
        try:
            while True:
                try:
                    item = self.queue.get(timeout=max(0.0, next_poll - time.monotonic()))
                except queue.Empty:
                    item = None
                if item is _STOP:
                    return
                if isinstance(item, Finished):
                    self._dispatch_call(item)
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.poll_s
                    wanted = [sink for sink in self.sinks if sink.enabled and sink.wants_snapshot]
                    if wanted and self.db_path:
                        reader = reader or OpsReader(self.db_path)
                        snapshot, backlog = reader.snapshot(), self.backlog()
                        for sink in wanted:
                            self._guard(sink, sink.on_snapshot, snapshot, backlog)
                        self.polls += 1
        finally:
            if reader is not None:
                reader.close()

    def _dispatch_call(self, finished: Finished) -> None:
        for sink in self.sinks:
            if sink.enabled:
                self._guard(sink, sink.on_call, finished)

    @staticmethod
    def _guard(sink: Sink, method: Any, *args: Any) -> None:
        try:
            method(*args)
        except Exception as e:  # one part's bug must not stop the others, nor the thread
            log.error("sluice: ops: %s failed: %r", type(sink).__name__, e, exc_info=e)

    def done(self) -> None:
        """At shutdown, after the core's `done` (the calls still in flight have their rows by then): hand
        over what is queued, then let each part finish (flush spans, deliver pending alerts)."""
        if self.thread is not None:
            try:
                self.queue.put(_STOP, timeout=5)
            except queue.Full:
                log.warning("sluice: ops: shutting down with %d calls not handed over", self.queue.qsize())
            self.thread.join(10)
            self.thread = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:
                log.warning("sluice: ops: %s did not close cleanly: %r", type(sink).__name__, e)
