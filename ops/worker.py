"""The ops process: `python -m ops.worker`, started by the proxy (addons/ops_feed.py), a pipe on its stdin.

It reads its `Settings`, then `Tick`s (the calls finished since the last one, and the proxy's own figures)
until `STOP` or the end of the pipe (the proxy exited, however it exited). Each call goes to the parts
(metrics, tracing, alerts); every `poll_s` the shared state (pool, OAuth expiry, quotas, budgets) is read
from the database for the gauges and the alerts. At the end each part finishes (spans flushed, queued
alerts delivered) and the process exits.

It runs at a lower CPU priority than the proxy (`NICE`): under load the proxy's traffic comes first. The
pipe is bounded, and so is what the proxy keeps for it: a process that falls behind costs left-out calls,
counted in `sluice_ops_dropped_total`, never a call's time. Ctrl-C reaches the whole process group; this
process ignores it and ends when the proxy, shutting down, says so.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any, Protocol

from ops.messages import STOP, Backlog, Finished, Settings, Status, Tick, read_frame
from state.ops import OpsReader, Snapshot

log = logging.getLogger("sluice")

NICE = 19  # the lowest priority: telemetry never competes with the traffic it describes
FRAMES_MAX = 16  # ticks read ahead of the parts; past it the pipe fills and the proxy counts drops


class Sink(Protocol):
    @property
    def enabled(self) -> bool: ...

    @property
    def wants_snapshot(self) -> bool: ...

    def on_call(self, finished: Finished) -> None: ...

    def on_snapshot(self, snapshot: Snapshot, backlog: Backlog) -> None: ...

    def close(self) -> None: ...


class Worker:
    def __init__(self, settings: Settings, sinks: Sequence[Sink], status: Status | None = None) -> None:
        self.settings = settings
        self.sinks = list(sinks)
        self.status = status or Status()
        self.reader: OpsReader | None = None
        self.next_poll = 0.0

    @classmethod
    def start(cls, settings: Settings) -> Worker:
        """The parts the settings switch on, started (the imports are here: a part that is off costs
        nothing, the OpenTelemetry SDK least of all)."""
        status = Status()
        sinks: list[Sink] = []
        if settings.metrics_fd is not None:
            from ops.metrics import Metrics

            metrics = Metrics(status)
            metrics.serve(socket.socket(fileno=settings.metrics_fd))
            log.info("sluice: Prometheus metrics at http://%s/metrics", settings.metrics_address)
            sinks.append(metrics)
        if settings.otlp_endpoint:
            from ops.tracing import Tracing

            tracing = Tracing()
            tracing.start(settings.otlp_endpoint, settings.otlp_content)
            sinks.append(tracing)
        if settings.alerts:
            from ops.alerts import Alerts

            alerts = Alerts(settings.db_path)
            alerts.start(settings.alerts)
            sinks.append(alerts)
        return cls(settings, sinks, status)

    def handle(self, message: object) -> bool:
        """Take one message from the proxy; False once it says stop."""
        if message == STOP:
            return False
        if isinstance(message, Tick):
            self.status.backlog, self.status.dropped = message.backlog, message.dropped
            for finished in message.calls:
                for sink in self.sinks:
                    if sink.enabled:
                        self._guard(sink, sink.on_call, finished)
        else:
            log.warning("sluice: ops: an unknown message from the proxy: %s", type(message).__name__)
        return True

    def poll(self) -> None:
        """Read the shared state for the parts that want it, if one is due."""
        if time.monotonic() < self.next_poll:
            return
        self.next_poll = time.monotonic() + self.settings.poll_s
        wanted = [sink for sink in self.sinks if sink.enabled and sink.wants_snapshot]
        if not wanted:
            return
        try:
            self.reader = self.reader or OpsReader(self.settings.db_path)
            snapshot = self.reader.snapshot()
        except Exception as e:  # the database may be away: the gauges wait, the counters go on
            log.warning("sluice: ops: the shared state could not be read: %s", e)
            return
        for sink in wanted:
            self._guard(sink, sink.on_snapshot, snapshot, self.status.backlog)
        self.status.polls += 1

    def run(self, frames: queue.Queue[object]) -> None:
        """Until the proxy says stop (or the pipe ends): hand over calls, poll on time."""
        while True:
            self.poll()
            try:
                message = frames.get(timeout=max(0.0, self.next_poll - time.monotonic()))
            except queue.Empty:
                continue
            if message is None or not self.handle(message):
                return

    @staticmethod
    def _guard(sink: Sink, method: Any, *args: Any) -> None:
        try:
            method(*args)
        except Exception as e:  # one part's bug must not stop the others, nor the process
            log.error("sluice: ops: %s failed: %r", type(sink).__name__, e, exc_info=e)

    def close(self) -> None:
        """Let each part finish: flush spans, deliver queued alerts (each bounded by its own timeout)."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:
                log.warning("sluice: ops: %s did not close cleanly: %r", type(sink).__name__, e)
        if self.reader is not None:
            self.reader.close()


def read_frames(stream: IO[bytes], frames: queue.Queue[object]) -> None:
    """The reader thread: frames from the pipe onto a short queue; None at the end of the pipe."""
    try:
        while (message := read_frame(stream)) is not None:
            frames.put(message)
    except Exception as e:  # a broken frame: the proxy will see this process exit and start another
        log.error("sluice: ops: cannot read from the proxy: %r", e)
    frames.put(None)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        os.nice(NICE)
    except OSError as e:
        log.info("sluice: ops: running at the proxy's priority (%s)", e)
    stream = sys.stdin.buffer
    settings = read_frame(stream)
    if not isinstance(settings, Settings):
        log.error("sluice: ops: started without settings; exiting")
        return 2
    worker = Worker.start(settings)
    frames: queue.Queue[object] = queue.Queue(maxsize=FRAMES_MAX)
    threading.Thread(target=read_frames, args=(stream, frames), name="sluice-ops-read", daemon=True).start()
    try:
        worker.run(frames)
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
