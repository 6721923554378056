"""Alerts that reach a person: each `[[alerts]]` webhook is told when something needs one.

Events (`events = [...]`, all by default): a credential disabled or recovered, a subscription window's
utilization crossing `quota_threshold`, a subscription window rejected, a budgeted client's spend
crossing `budget_share` of its limit, a burst of prompt-cache misses from one client
(`cache_miss_burst`), the database refusing writes so rows are held in memory (`rows_in_memory`).

Each fires once per crossing (rules/alerting.py), with a hold-down per subject. The checks run in the ops
process (ops/worker.py) from finished calls and the shared state it polls; delivery runs on one thread per
webhook, with a timeout, retries with backoff and a bounded queue, so a webhook that is down never slows
a call. Every alert is recorded in the `alerts` table (state/ops.py) before it is sent, and that record
is also what keeps two processes sharing the database from sending the same crossing twice.

A webhook URL is a secret reference like a key (a Slack URL is itself a credential): the log and the
table name a webhook by its host and a fingerprint, never by its URL.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ops.messages import AlertTarget, Backlog, Finished
from rules.alerting import AlertEvent, Burst, Crossings, EventKind, webhook_body, window_reset_key
from rules.config import Alert
from rules.secrets import fingerprint
from state.ops import AlertLog, Snapshot
from state.store import open_store

log = logging.getLogger("sluice")

QUEUE_MAX = 256
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0


def webhook_name(url: str) -> str:
    """How logs and the alerts table name a webhook: scheme, host and a fingerprint of the whole URL."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}/… ({fingerprint(url)[:15]})"


@dataclass(slots=True)
class Webhook:
    """One `[[alerts]]` entry at run time: its rules, its crossing state, its delivery thread."""

    config: Alert
    url: str
    name: str
    crossings: Crossings
    misses: Burst
    queue: queue.Queue[AlertEvent | None]
    thread: threading.Thread | None = None

    def wants(self, kind: str) -> bool:
        return kind in self.config.events


class Alerts:
    def __init__(self, db_path: str | None = None) -> None:
        self.webhooks: list[Webhook] = []
        self.db_path = db_path
        self.sent = 0  # delivered, for tests and the log

    def start(self, targets: tuple[AlertTarget, ...]) -> None:
        """One delivery thread per webhook (the URLs were checked by the proxy, which resolved them)."""
        for target in targets:
            webhook = Webhook(
                config=target.config,
                url=target.url,
                name=webhook_name(target.url),
                crossings=Crossings(target.config.hold_down_s),
                misses=Burst(target.config.cache_miss_burst.count, target.config.cache_miss_burst.window_s),
                queue=queue.Queue(maxsize=QUEUE_MAX),
            )
            webhook.thread = threading.Thread(
                target=self._deliver_all, args=(webhook,), name="sluice-alerts", daemon=True
            )
            webhook.thread.start()
            self.webhooks.append(webhook)

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks)

    wants_snapshot = True

    # -- checks (the ops process's main thread) ----------------------------------------------------------

    def on_call(self, finished: Finished) -> None:
        row = finished.row
        status = row.get("cache_status")
        if status is None:
            return
        subject = f"client {row.get('client') or '(none)'}"
        now = time.time()
        model = row.get("model")  # whatever the client wrote: cut
        details = {
            "client": row.get("client"),
            "model": model[:128] if model else None,
            "call_id": row.get("id"),
        }
        for webhook in self.webhooks:
            if not webhook.wants("cache_miss_burst"):
                continue  # no need to count
            rule = webhook.config.cache_miss_burst
            self._observe(
                webhook,
                "cache_miss_burst",
                subject,
                status == "miss" and webhook.misses.add(subject, now),
                now,
                key=f"{subject}|{now:.3f}",
                message=(
                    f"{subject}: {rule.count} prompt-cache misses within "
                    f"{rule.window_s:g}s (last: {row.get('cache_note') or 'cause unknown'})"
                ),
                details=details,
            )

    def on_snapshot(self, snapshot: Snapshot, backlog: Backlog) -> None:
        for webhook in self.webhooks:
            self._check_credentials(webhook, snapshot)
            self._check_windows(webhook, snapshot)
            self._check_budgets(webhook, snapshot)
            self._check_backlog(webhook, snapshot.at, backlog)

    def _observe(
        self,
        webhook: Webhook,
        kind: EventKind,
        subject: str,
        active: bool,
        at: float,
        *,
        key: str,
        message: str,
        details: Mapping[str, Any],
    ) -> None:
        """Record whether the condition holds; on a crossing the webhook asked for, queue its alert.

        `key` names the crossing for the alerts table (with `kind`)."""
        if webhook.crossings.update(kind, subject, active, at) and webhook.wants(kind):
            self._fire(webhook, AlertEvent(kind, subject, message, at, f"{kind}|{key}", details))

    def _check_credentials(self, webhook: Webhook, snapshot: Snapshot) -> None:
        for credential in snapshot.credentials:
            name, host = credential.label, credential.host
            subject = f"{host} {name}"
            details = {"host": host, "credential": name, "reason": credential.reason}
            key = f"{host}|{credential.fingerprint}|{credential.changed_at or 0:.3f}"
            was_disabled = webhook.crossings.is_active("credential_disabled", subject)
            reason = credential.reason or "no reason recorded"
            self._observe(
                webhook,
                "credential_disabled",
                subject,
                credential.state == "disabled",
                snapshot.at,
                key=key,
                message=f"credential {name} of {host} is disabled: {reason}",
                details=details,
            )
            self._observe(
                webhook,
                "credential_recovered",
                subject,
                was_disabled and credential.state == "active",
                snapshot.at,
                key=key,
                message=f"credential {name} of {host} is active again",
                details=details,
            )

    def _check_windows(self, webhook: Webhook, snapshot: Snapshot) -> None:
        threshold = webhook.config.quota_threshold
        for window in snapshot.windows:
            subject = f"{window.host} {window.credential} {window.window}"
            reset = window_reset_key(window.reset_at)
            where = f"{window.window} window of {window.credential} ({window.host})"
            used = window.utilization
            details = {
                "host": window.host,
                "credential": window.credential,
                "window": window.window,
                "utilization": used,
                "status": window.status,
                "reset_at": reset,
            }
            self._observe(
                webhook,
                "quota_threshold",
                subject,
                used is not None and used >= threshold,
                snapshot.at,
                key=f"{subject}|{threshold}|{reset}",
                message=(f"{where} at {used or 0:.0%}, over the {threshold:.0%} threshold; resets {reset}"),
                details=details,
            )
            self._observe(
                webhook,
                "window_rejected",
                subject,
                window.status == "rejected",
                snapshot.at,
                key=f"{subject}|{reset}",
                message=f"{where}: the subscription rejected calls; resets {reset}",
                details=details,
            )

    def _check_budgets(self, webhook: Webhook, snapshot: Snapshot) -> None:
        share = webhook.config.budget_share
        for budget in snapshot.budgets:
            used = budget.spent_usd / budget.limit_usd if budget.limit_usd > 0 else 0.0
            period = budget.resets_at.isoformat() if budget.resets_at else "total"
            self._observe(
                webhook,
                "budget_share",
                f"client {budget.client}",
                used >= share,
                snapshot.at,
                key=f"{budget.client}|{share}|{period}",
                message=(
                    f"client {budget.client} has spent "
                    f"${budget.spent_usd:.2f} of its ${budget.limit_usd:.2f} {budget.period} budget "
                    f"({used:.0%}, threshold {share:.0%})"
                ),
                details={
                    "client": budget.client,
                    "spent_usd": budget.spent_usd,
                    "limit_usd": budget.limit_usd,
                },
            )

    def _check_backlog(self, webhook: Webhook, now: float, backlog: Backlog) -> None:
        self._observe(
            webhook,
            "rows_in_memory",
            "database",
            backlog.held >= webhook.config.rows_in_memory,
            now,
            key=f"{id(self)}|{now:.3f}",  # held rows are this process's: each crossing its own
            message=f"the database refuses writes: {backlog.held} call records are held in memory",
            details={"held": backlog.held, "queued": backlog.queued},
        )

    def _fire(self, webhook: Webhook, event: AlertEvent) -> None:
        try:
            webhook.queue.put_nowait(event)
        except queue.Full:
            log.warning("sluice: alert to %s dropped, its queue is full: %s", webhook.name, event.message)

    # -- delivery (one thread per webhook) -------------------------------------------------------------

    def _deliver_all(self, webhook: Webhook) -> None:
        alert_log: AlertLog | None = None
        while (event := webhook.queue.get()) is not None:
            try:
                alert_log = alert_log or AlertLog(open_store(self.db_path or "sluice.db").connect())
                claimed = alert_log.claim(
                    dedup=event.dedup,
                    webhook=webhook.name,
                    at=event.at,
                    event=event.kind,
                    subject=event.subject,
                    message=event.message,
                )
            except Exception as e:  # the database may be the very thing the alert is about
                log.warning("sluice: alert not recorded (%s); sending it anyway", e)
                alert_log, claimed = None, True
            if not claimed:
                continue  # this crossing was already alerted (another process, or before a restart)
            attempts, error = self._deliver(webhook, event)
            if error is None:
                self.sent += 1
                log.info("sluice: alert %s sent to %s", event.kind, webhook.name)
            else:
                log.warning(
                    "sluice: alert %s not delivered to %s after %d attempts: %s",
                    event.kind,
                    webhook.name,
                    attempts,
                    error,
                )
            if alert_log is not None:
                try:
                    alert_log.finish(
                        dedup=event.dedup,
                        webhook=webhook.name,
                        delivered=error is None,
                        attempts=attempts,
                        error=error,
                    )
                except Exception as e:
                    log.warning("sluice: alert delivery not recorded: %s", e)

    @staticmethod
    def _deliver(webhook: Webhook, event: AlertEvent) -> tuple[int, str | None]:
        """POST the alert; retries with backoff on a network error or a 5xx/429. (attempts, error or None)"""
        body = webhook_body(event, webhook.config.format)
        delay = RETRY_INITIAL_S
        error: str | None = None
        attempts = 0
        for attempt in range(1 + webhook.config.retries):
            attempts = attempt + 1
            request = urllib.request.Request(
                webhook.url, data=body, method="POST", headers={"content-type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=webhook.config.timeout_s) as response:
                    response.read(64 * 1024)
                return attempts, None
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code}"
                if e.code < 500 and e.code != 429:
                    return attempts, error  # the webhook refuses this alert: retrying will not help
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                # Never str(e) whole: some errors quote the request, i.e. the URL.
                reason = getattr(e, "reason", e)
                detail = reason.strerror if isinstance(reason, OSError) and reason.strerror else ""
                error = (
                    f"{type(reason).__name__} {detail}".strip() if isinstance(reason, BaseException) else "?"
                )
            if attempt < webhook.config.retries:
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        return attempts, error

    def close(self) -> None:
        """Stop the delivery threads once the alerts already queued are sent (each bounded by its
        timeout and retries)."""
        for webhook in self.webhooks:
            if webhook.thread is not None:
                try:
                    webhook.queue.put(None, timeout=1)
                except queue.Full:
                    continue
                webhook.thread.join(webhook.config.timeout_s * (1 + webhook.config.retries) + 5)
        self.webhooks = []
