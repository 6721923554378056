"""The ops feed: hands every finished call to the ops process (ops/worker.py), which owns the metrics,
tracing and alerts, off the proxy's interpreter lock.

A call's row is handed over as it is queued for the database (the meter's `before_record`): the hook only
appends a reference to a bounded queue (under a microsecond). A sender thread wakes every `TICK_S`, and
writes what is queued to the ops process's pipe as one batch (a few microseconds a row), with the
writer's backlog. Building a span (~140 µs in OpenTelemetry's SDK), counting, polling the shared state and
delivering alerts all happen in that process, at a lower CPU priority. When the queue is full (the ops
process cannot keep up), a call is left out of the ops view and counted (`sluice_ops_dropped_total`),
never waited for: the database row is still written.

The options live here, checked here: a bad address or endpoint, or a webhook URL that is not http(s),
stops start-up with the option's name. The proxy binds the `/metrics` socket itself and passes it down,
so the port is taken when start-up succeeds. A change of any of them starts a new ops process; one that
exits on its own is started again after `RESTART_S`, with the same socket.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import IO

from mitmproxy import ctx, exceptions, http

from addons.calls import Call
from addons.core import SluiceCore
from ops.messages import STOP, AlertTarget, Backlog, Finished, Settings, Tick, write_frame
from rules.config import ConfigError, resolve_secret
from rules.ops import parse_listen_address, parse_otlp_endpoint
from rules.usage import Reading
from state.threads import name_this_thread
from state.writer import CallRecord

log = logging.getLogger("sluice")

QUEUE_MAX = 10_000
DEFAULT_POLL_MS = 5_000
TICK_S = 0.1  # how long a finished call waits for its batch (and how fresh the backlog gauges are)
IDLE_TICK_S = 1.0  # with no calls, the backlog figures still go down this often
RESTART_S = 5.0
STOP_TIMEOUT_S = 30.0  # the ops process's last flush: spans, queued alerts (each bounded by its timeout)
_ROOT = str(Path(__file__).resolve().parent.parent)


class OpsFeed:
    def __init__(self, core: SluiceCore) -> None:
        self.core = core
        self.pending: collections.deque[Finished] = collections.deque()
        # Calls left out: while the queue was full (counted on the event loop), and while the ops process
        # was down (counted by the sender thread). Two counters, each written by one thread.
        self.dropped_full = 0
        self.dropped_down = 0
        self.settings: Settings | None = None  # what the running ops process was told; None: all off
        self.listener: socket.socket | None = None  # the /metrics socket, bound here
        self.process: subprocess.Popen[bytes] | None = None
        self.sender: threading.Thread | None = None
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # the process and its pipe: the sender's and configure's
        self.keep_content = False
        self.started_at = 0.0

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "sluice_metrics",
            str,
            "",
            "Serve Prometheus metrics at http://ADDRESS/metrics: host:port (127.0.0.1:9464), or a bare port "
            "on loopback. Empty: off.",
        )
        loader.add_option(
            "sluice_otlp",
            str,
            "",
            "Export a span per provider call and GenAI metrics over OTLP/HTTP to this collector "
            "(http://127.0.0.1:4318). Empty: off.",
        )
        loader.add_option(
            "sluice_otlp_content",
            bool,
            False,
            "Also put the request's messages and system instructions on each span (off: no content leaves).",
        )
        loader.add_option(
            "sluice_ops_poll_ms",
            int,
            DEFAULT_POLL_MS,
            "How often the metrics and alerts re-read the credential pool, quotas and budgets (ms).",
        )

    # -- configuration ---------------------------------------------------------------------------------

    def configure(self, updated: set[str]) -> None:
        watched = {"sluice_metrics", "sluice_otlp", "sluice_otlp_content", "sluice_ops_poll_ms"}
        if not updated & (watched | {"sluice_config", "sluice_db"}):
            return
        options = ctx.options
        if options.sluice_ops_poll_ms < 50:
            raise exceptions.OptionsError(
                f"sluice_ops_poll_ms: at least 50 ms, got {options.sluice_ops_poll_ms}"
            )
        address = options.sluice_metrics.strip() or None
        endpoint = None
        if otlp := options.sluice_otlp.strip():
            try:
                endpoint = parse_otlp_endpoint(otlp)
            except ValueError as e:
                raise exceptions.OptionsError(f"sluice_otlp: {e}") from None
        alerts = alert_targets(self.core)
        store = self.core.store
        wanted = Settings(
            db_path=store.location if store is not None else "",
            poll_s=options.sluice_ops_poll_ms / 1000,
            metrics_address=address,
            otlp_endpoint=endpoint,
            otlp_content=bool(options.sluice_otlp_content),
            alerts=alerts,
        )
        if self.settings is not None and wanted == dataclasses.replace(self.settings, metrics_fd=None):
            return
        listener = self.listener
        if address != (self.settings.metrics_address if self.settings else None):
            listener = bind_metrics(address) if address else None
        self._stop_process()
        if self.listener is not None and self.listener is not listener:
            self.listener.close()
        self.listener = listener
        self.keep_content = wanted.otlp_content and endpoint is not None
        self.core.keeps_request_json = self.keep_content
        if address is None and endpoint is None and not wanted.alerts:
            self.settings = None
            return
        self.settings = dataclasses.replace(
            wanted, metrics_fd=listener.fileno() if listener is not None else None
        )
        with self.lock:
            self._start_process()
        if self.sender is None:
            self.stopping.clear()
            self.sender = threading.Thread(target=self._send_loop, name="sluice-ops", daemon=True)
            self.sender.start()

    # -- the request path ------------------------------------------------------------------------------

    def before_record(self, flow: http.HTTPFlow, call: Call, reading: Reading, record: CallRecord) -> None:
        """The meter's hook, as each call's row is queued: only an append, whatever the ops parts do."""
        if self.settings is None:
            return
        if len(self.pending) >= QUEUE_MAX:
            self.dropped_full += 1
            if self.dropped_full in (1, 100) or self.dropped_full % 10_000 == 0:
                log.warning("sluice: ops: the ops process is behind; %d calls left out", self.dropped_full)
            return
        headers = call.request_headers
        self.pending.append(
            Finished(
                row=record.row,
                request_model=call.request_model,
                response_model=reading.model,
                traceparent=headers.get("traceparent"),
                tracestate=headers.get("tracestate"),
                started=call.started,
                request_json=call.request_json if self.keep_content else None,
            )
        )

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_down

    # -- the sender thread -----------------------------------------------------------------------------

    def backlog(self) -> Backlog:
        writer = self.core.writer
        queued, held = writer.backlog() if writer is not None else (0, 0)
        return Backlog(queued, held)

    def _send_loop(self) -> None:
        name_this_thread("sluice-ops")
        last: tuple[Backlog, int] | None = None
        last_sent = 0.0
        while not self.stopping.is_set():
            self.wake.wait(TICK_S)
            self.wake.clear()
            now = time.monotonic()
            figures = (self.backlog(), self.dropped)
            if not self.pending and figures == last and now - last_sent < IDLE_TICK_S:
                continue
            if self._send(self._take(), *figures):
                last, last_sent = figures, now

    def _take(self) -> list[Finished]:
        calls: list[Finished] = []
        while self.pending:
            calls.append(self.pending.popleft())
        return calls

    def _send(self, calls: list[Finished], backlog: Backlog, dropped: int) -> bool:
        """Write one tick to the ops process, starting it again first if it exited. False if it is down
        (the tick's calls are then left out and counted)."""
        with self.lock:
            process = self.process
            if process is None or process.poll() is not None:
                if process is not None:
                    log.error("sluice: ops: the ops process exited (%s)", process.returncode)
                    self.process = None
                if self.settings is None or time.monotonic() - self.started_at < RESTART_S:
                    self.dropped_down += len(calls)
                    return False
                self._start_process()
                process = self.process
            assert process is not None and process.stdin is not None
            try:
                write_frame(process.stdin, Tick(calls, backlog, dropped))
            except (BrokenPipeError, ValueError, OSError) as e:
                log.error("sluice: ops: cannot hand calls to the ops process: %s", e)
                self.dropped_down += len(calls)
                return False
            return True

    # -- the ops process -------------------------------------------------------------------------------

    def _start_process(self) -> None:
        """Start the ops process with the current settings (called with the lock held)."""
        assert self.settings is not None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        fds = (self.settings.metrics_fd,) if self.settings.metrics_fd is not None else ()
        self.started_at = time.monotonic()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ops.worker"], stdin=subprocess.PIPE, pass_fds=fds, env=env
            )
            assert self.process.stdin is not None
            write_frame(self.process.stdin, self.settings)
        except OSError as e:
            log.error("sluice: ops: cannot start the ops process (%s): metrics, traces and alerts are off", e)
            self.process = None

    def _stop_process(self) -> None:
        """Tell the ops process to finish (after what is queued), and wait for it, bounded."""
        locked = self.lock.acquire(timeout=STOP_TIMEOUT_S)
        process, self.process = self.process, None
        if locked:
            self.lock.release()
        elif process is not None:  # the sender is stuck writing to a process that reads nothing
            process.kill()
        if process is None:
            return
        stdin: IO[bytes] | None = process.stdin
        try:
            if stdin is not None:
                write_frame(stdin, STOP)
                stdin.close()
        except (BrokenPipeError, ValueError, OSError):
            pass  # it has exited already
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("sluice: ops: the ops process did not finish in %ds; stopping it", STOP_TIMEOUT_S)
            process.kill()
            process.wait()

    def done(self) -> None:
        """At shutdown, after the core's `done` (the calls still in flight have their rows by then): hand
        over what is queued, then let the ops process finish (flush spans, deliver pending alerts)."""
        if self.sender is not None:
            self.stopping.set()
            self.wake.set()
            self.sender.join(10)
            self.sender = None
        if self.process is not None:
            self._send(self._take(), self.backlog(), self.dropped)
        self._stop_process()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.settings = None


def bind_metrics(address: str) -> socket.socket:
    """The `/metrics` listening socket (bound here, so a bad or taken address stops start-up)."""
    try:
        host, port = parse_listen_address(address)
    except ValueError as e:
        raise exceptions.OptionsError(f"sluice_metrics: {e}") from None
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family)
    except OSError as e:
        raise exceptions.OptionsError(f"sluice_metrics: cannot listen on {host}:{port}: {e}") from None
    listener.set_inheritable(True)
    return listener


def alert_targets(core: SluiceCore) -> tuple[AlertTarget, ...]:
    """The config's `[[alerts]]` with their URLs resolved; a URL that cannot be, or is not http(s), stops
    start-up naming the entry (never the URL: it is a secret)."""
    targets = []
    for index, alert in enumerate(core.config.alerts):
        field = f"alerts[{index}].url"
        try:
            secret, inline = resolve_secret(alert.url, field=field, base_dir=core.config_dir)
        except ConfigError as e:
            raise exceptions.OptionsError(f"sluice_config {ctx.options.sluice_config}: {e}") from None
        url = secret.get_secret_value()
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise exceptions.OptionsError(
                f"sluice_config {ctx.options.sluice_config}: {field}: must be an http:// or https:// URL"
            )
        if inline:
            log.warning("sluice: %s is given inline; a webhook URL is a secret: prefer env: or file:", field)
        targets.append(AlertTarget(alert, url))
    return tuple(targets)
