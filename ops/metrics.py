"""Prometheus metrics: `--set sluice_metrics=127.0.0.1:9464` serves `/metrics` (off by default).

Runs in the ops process (ops/worker.py): counters and histograms are fed from each finished call the proxy
hands over, never on the request path; the gauges are read from the latest snapshot of the shared state at
scrape time, so a credential that left the config or a client whose budget was removed leaves the series
with it. The proxy binds the listening socket (a bad address stops its start-up) and passes it here.

Series names carry no instance label: Prometheus adds `instance` itself, so several proxies expose the
same series and `sum by (model)` adds them up. Label values are bounded (rules/ops.py's `LabelFolder`):
a client that invents model names cannot create series without end. No label holds a secret: clients
are the config's names, credentials the config's labels (`keys[0] env:NAME`) or SHA-256 fingerprints.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

from ops.messages import Backlog, Finished, Status
from rules.call_outcome import is_error
from rules.ops import LabelFolder, seconds, status_class, token_counts
from state.ops import Snapshot

log = logging.getLogger("sluice")

# Distinct values each label keeps before the rest fold into `other`.
MAX_MODELS = 64
MAX_CLIENTS = 256
MAX_HOSTS = 32
MAX_CREDENTIALS = 128
# LLM calls take from a fraction of a second to many minutes.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60)
CALL_LABELS = ("provider", "model", "client", "status_class")
POOL_STATES = ("active", "cooling", "disabled")


class Metrics:
    def __init__(self, status: Status) -> None:
        self.status = status
        self.registry = CollectorRegistry(auto_describe=True)
        self.models = LabelFolder(MAX_MODELS)
        self.clients = LabelFolder(MAX_CLIENTS)
        self.hosts = LabelFolder(MAX_HOSTS)
        self.credentials = LabelFolder(MAX_CREDENTIALS)
        self.providers = LabelFolder(8)
        self.windows = LabelFolder(64)  # rate-limit window and limit names, as providers name them
        self.calls = Counter("sluice_calls", "Provider calls", CALL_LABELS, registry=self.registry)
        self.errors = Counter(
            "sluice_errors",
            "Calls that failed: an error recorded, an HTTP status >= 400, or no response at all",
            CALL_LABELS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "sluice_tokens",
            "Tokens by kind: input (uncached), cache_read, cache_write_5m, cache_write_1h, output (reasoning "
            "included); each token is counted under one kind",
            ("provider", "model", "client", "kind"),
            registry=self.registry,
        )
        self.cost = Counter(
            "sluice_cost_usd",
            "Cost in US dollars, as priced into the calls table (unpriced calls add nothing)",
            ("provider", "model", "client"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "sluice_call_duration_seconds",
            "Request start to the last byte of the answer (or to the failure)",
            ("provider", "model", "client"),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "sluice_time_to_first_token_seconds",
            "Request start to the first output event of a stream (to the response, for a whole one)",
            ("provider", "model", "client"),
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.snapshot: Snapshot | None = None
        self.registry.register(_StateCollector(self))
        self.server: ThreadingHTTPServer | None = None
        self.server_thread: threading.Thread | None = None

    def serve(self, listening: socket.socket) -> None:
        """Answer scrapes on the socket the proxy bound, on a thread of this process."""
        server = _Server(listening.getsockname()[:2], MetricsHandler.factory(self.registry), False)
        server.socket.close()
        server.socket = listening
        server.server_address = listening.getsockname()
        self.server = server
        self.server_thread = threading.Thread(target=server.serve_forever, name="sluice-metrics", daemon=True)
        self.server_thread.start()

    @property
    def enabled(self) -> bool:
        return self.server is not None

    wants_snapshot = True

    def on_call(self, finished: Finished) -> None:
        row = finished.row
        provider = self.providers.fold(row.get("provider"))
        model = self.models.fold(row.get("model"))
        client = self.clients.fold(row.get("client"))
        labels = (provider, model, client, status_class(row.get("status")))
        self.calls.labels(*labels).inc()
        if is_error(row):
            self.errors.labels(*labels).inc()
        for kind, count in token_counts(row):
            self.tokens.labels(provider, model, client, kind).inc(count)
        cost = row.get("cost_usd")
        if isinstance(cost, int | float) and cost > 0:
            self.cost.labels(provider, model, client).inc(cost)
        duration = seconds(row.get("duration_ms"))
        if duration is not None:
            self.duration.labels(provider, model, client).observe(duration)
        ttft = seconds(row.get("ttft_ms"))
        if ttft is not None:
            self.ttft.labels(provider, model, client).observe(ttft)

    def on_snapshot(self, snapshot: Snapshot, backlog: Backlog) -> None:
        self.snapshot = snapshot

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
            self.server_thread = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a scraper that hangs must not keep the process from exiting


class _StateCollector(Collector):
    """The gauges, built at scrape time from the latest snapshot and the writer's live backlog."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # built per scrape: nothing to check for duplicates at registration

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        status = metrics.status
        queued, held = status.backlog.queued, status.backlog.held
        yield GaugeMetricFamily("sluice_writer_queue_depth", "Call records waiting for the writer", queued)
        yield GaugeMetricFamily(
            "sluice_writer_rows_in_memory",
            "Call records held in memory because the database refuses writes (locked, full, read-only)",
            held,
        )
        yield CounterMetricFamily(
            "sluice_ops_dropped",
            "Calls left out of the metrics and traces because the ops process was behind (rows still "
            "written)",
            status.dropped,
        )
        yield CounterMetricFamily(
            "sluice_ops_polls",
            "Times the shared state (pool, quotas, budgets) was read for the gauges and alerts",
            status.polls,
        )
        snapshot = metrics.snapshot
        if snapshot is None:
            return
        yield from _credential_gauges(metrics, snapshot)
        yield from _quota_gauges(metrics, snapshot)
        yield from _budget_gauges(metrics, snapshot)


def _credential_gauges(metrics: Metrics, snapshot: Snapshot) -> Iterator[Metric]:
    now = time.time()
    labels = ["host", "credential"]
    state = GaugeMetricFamily(
        "sluice_credential_state", "1 for the pool state each credential is in", labels=[*labels, "state"]
    )
    cooldown = GaugeMetricFamily(
        "sluice_credential_cooldown_seconds",
        "Seconds until a cooling credential is usable again",
        labels=labels,
    )
    headroom = GaugeMetricFamily(
        "sluice_credential_headroom_ratio",
        "What the provider last said a credential has left, 0..1, by its tightest limit (what the pool "
        "starts new conversations by)",
        labels=labels,
    )
    for credential in snapshot.credentials:
        host, name = metrics.hosts.fold(credential.host), metrics.credentials.fold(credential.label)
        for pool_state in POOL_STATES:
            state.add_metric([host, name, pool_state], 1.0 if credential.state == pool_state else 0.0)
        if credential.state == "cooling" and credential.cooling_until is not None:
            cooldown.add_metric([host, name], max(0.0, credential.cooling_until - now))
        if credential.headroom is not None:
            headroom.add_metric([host, name], credential.headroom)
    yield state
    yield cooldown
    yield headroom
    expiry = GaugeMetricFamily(
        "sluice_oauth_expiry_seconds",
        "Seconds until the upstream's OAuth access token expires (negative: expired)",
        labels=["host"],
    )
    for host, expires_at in snapshot.oauth_expires_at:
        expiry.add_metric([metrics.hosts.fold(host)], expires_at - now)
    yield expiry


def _quota_gauges(metrics: Metrics, snapshot: Snapshot) -> Iterator[Metric]:
    utilization = GaugeMetricFamily(
        "sluice_ratelimit_utilization",
        "Subscription window utilization the provider last reported (0..1; windows 5h, 7d, 7d_opus, ...)",
        labels=["host", "credential", "window"],
    )
    for window in snapshot.windows:
        if window.utilization is not None:
            utilization.add_metric(
                [
                    metrics.hosts.fold(window.host),
                    metrics.credentials.fold(window.credential),
                    metrics.windows.fold(window.window),
                ],
                window.utilization,
            )
    remaining = GaugeMetricFamily(
        "sluice_ratelimit_remaining",
        "What the provider last reported left of a counted limit (requests, tokens, ...)",
        labels=["host", "credential", "limit"],
    )
    limit = GaugeMetricFamily(
        "sluice_ratelimit_limit",
        "The size of a counted limit, as the provider last reported it",
        labels=["host", "credential", "limit"],
    )
    for level in snapshot.limits:
        names = [
            metrics.hosts.fold(level.host),
            metrics.credentials.fold(level.credential),
            metrics.windows.fold(level.limit_name),
        ]
        if level.remaining is not None:
            remaining.add_metric(names, level.remaining)
        if level.limit is not None:
            limit.add_metric(names, level.limit)
    yield utilization
    yield remaining
    yield limit


def _budget_gauges(metrics: Metrics, snapshot: Snapshot) -> Iterator[Metric]:
    spent = GaugeMetricFamily(
        "sluice_budget_spent_usd",
        "A budgeted client's spend in its current period",
        labels=["client", "period"],
    )
    reserved = GaugeMetricFamily(
        "sluice_budget_reserved_usd",
        "Held for a budgeted client's calls in flight",
        labels=["client", "period"],
    )
    limit = GaugeMetricFamily(
        "sluice_budget_limit_usd", "A budgeted client's limit per period", labels=["client", "period"]
    )
    for budget in snapshot.budgets:
        names = [metrics.clients.fold(budget.client), budget.period]
        spent.add_metric(names, budget.spent_usd)
        reserved.add_metric(names, budget.reserved_usd)
        limit.add_metric(names, budget.limit_usd)
    yield spent
    yield reserved
    yield limit
