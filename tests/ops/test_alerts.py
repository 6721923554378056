"""Alerts: which snapshots and calls fire which alerts, once per crossing; and delivery with retries."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bench.ops_sink import PostSink
from ops.alerts import Alerts, Webhook, webhook_name
from ops.messages import Backlog, Finished
from rules.alerting import AlertEvent, Burst, Crossings
from rules.config import Alert, MissBurst
from state.budgets import ClientBudget
from state.ops import Snapshot, WindowLevel
from state.pool import CredentialState

NOW = 1_800_000_000.0
HOST = "api.anthropic.com"
SECRET_URL = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXSECRET"


def webhook(**config: Any) -> Webhook:
    alert = Alert(url="env:X", **config)
    return Webhook(
        config=alert,
        url=SECRET_URL,
        name=webhook_name(SECRET_URL),
        crossings=Crossings(alert.hold_down_s),
        misses=Burst(alert.cache_miss_burst.count, alert.cache_miss_burst.window_s),
        queue=queue.Queue(),
    )


def alerts_with(hook: Webhook) -> Alerts:
    alerts = Alerts()
    alerts.webhooks = [hook]
    return alerts


def fired(hook: Webhook) -> list[AlertEvent]:
    events = []
    while not hook.queue.empty():
        event = hook.queue.get_nowait()
        assert event is not None
        events.append(event)
    return events


def credential(state: str, changed_at: float = NOW, reason: str | None = None) -> CredentialState:
    return CredentialState(HOST, "keys[0] env:K1", "sha256:aaaa", "key", 0, state, reason, None, changed_at)  # type: ignore[arg-type]


def window(utilization: float | None, status: str = "allowed", name: str = "5h") -> WindowLevel:
    return WindowLevel(
        HOST, "keys[0] env:K1", name, utilization, status, datetime(2026, 12, 4, 15, tzinfo=UTC)
    )


def test_a_disabled_key_alerts_once_and_its_recovery_once() -> None:
    hook = webhook()
    alerts = alerts_with(hook)
    states = ["active", "disabled", "disabled", "disabled", "active", "active"]
    kinds = []
    for step, state in enumerate(states):
        alerts.on_snapshot(
            Snapshot(at=NOW + step, credentials=(credential(state, reason="401 bad key"),)), Backlog(0, 0)
        )
        kinds += [event.kind for event in fired(hook)]
    assert kinds == ["credential_disabled", "credential_recovered"]


def test_a_flapping_key_pages_once_within_the_hold_down() -> None:
    hook = webhook(hold_down_s=600)
    alerts = alerts_with(hook)
    kinds = []
    for step, state in enumerate(["disabled", "active", "disabled", "active", "disabled"]):
        alerts.on_snapshot(
            Snapshot(at=NOW + step * 60, credentials=(credential(state, NOW + step),)), Backlog(0, 0)
        )
        kinds += [event.kind for event in fired(hook)]
    assert kinds == ["credential_disabled", "credential_recovered"]


def test_quota_crossing_and_rejected_window() -> None:
    hook = webhook(quota_threshold=0.8)
    alerts = alerts_with(hook)
    levels = [window(0.5), window(0.85), window(0.95), window(1.0, "rejected")]
    events = []
    for step, level in enumerate(levels):
        alerts.on_snapshot(Snapshot(at=NOW + step, windows=(level,)), Backlog(0, 0))
        events += fired(hook)
    assert [(e.kind, e.subject) for e in events] == [
        ("quota_threshold", f"{HOST} keys[0] env:K1 5h"),
        ("window_rejected", f"{HOST} keys[0] env:K1 5h"),
    ]
    assert "85%" in events[0].message and "2026-12-04T15:00:00+00:00" in events[0].dedup


def test_events_a_webhook_did_not_ask_for_are_not_sent_but_still_tracked() -> None:
    hook = webhook(events=["credential_recovered"])
    alerts = alerts_with(hook)
    for step, state in enumerate(["disabled", "active"]):
        alerts.on_snapshot(Snapshot(at=NOW + step, credentials=(credential(state),)), Backlog(0, 0))
    assert [event.kind for event in fired(hook)] == ["credential_recovered"]


def test_budget_share_and_rows_in_memory() -> None:
    hook = webhook(budget_share=0.5, rows_in_memory=10)
    alerts = alerts_with(hook)
    for step, (spent, held) in enumerate([(4.0, 0), (11.0, 5), (12.0, 10), (13.0, 250)]):
        budget = ClientBudget("alice", 20.0, "day", spent, 0.0, datetime(2026, 12, 5, tzinfo=UTC))
        alerts.on_snapshot(Snapshot(at=NOW + step, budgets=(budget,)), Backlog(0, held))
    events = fired(hook)
    assert [e.kind for e in events] == ["budget_share", "rows_in_memory"]
    assert "$11.00 of its $20.00 day budget (55%" in events[0].message
    assert events[1].details == {"held": 10, "queued": 0}


def finished(cache_status: str | None, client: str = "alice") -> Finished:
    row = {
        "id": "c",
        "client": client,
        "model": "m",
        "cache_status": cache_status,
        "cache_note": "TTL expired",
    }
    return Finished(row, None, None, None, None, NOW, None)


def test_a_burst_of_cache_misses_from_one_client_alerts_once() -> None:
    hook = webhook(cache_miss_burst=MissBurst(count=3, window_s=300))
    alerts = alerts_with(hook)
    for status in ["miss", "miss", "hit", "miss", "miss", "miss", "miss", None]:
        alerts.on_call(finished(status))
    alerts.on_call(finished("miss", client="bob"))
    [event] = fired(hook)
    assert (event.kind, event.subject) == ("cache_miss_burst", "client alice")
    assert "3 prompt-cache misses" in event.message and "TTL expired" in event.message


def test_the_webhook_is_named_by_host_and_fingerprint_never_its_url() -> None:
    name = webhook_name(SECRET_URL)
    assert (
        name.startswith("https://hooks.slack.com/… (sha256:") and "SECRET" not in name and "T000" not in name
    )


# Delivery.


@pytest.fixture
def hook_server() -> Iterator[PostSink]:
    server = PostSink(keep=True)
    yield server
    server.stop()


EVENT = AlertEvent("rows_in_memory", "database", "held", NOW, "d")


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [([500, 429], (3, None)), ([400], (1, "HTTP 400")), ([503, 503, 503, 503], (4, "HTTP 503"))],
)
def test_delivery_retries_server_errors_but_not_a_refusal(
    hook_server: PostSink,
    statuses: list[int],
    expected: tuple[int, str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("ops.alerts.RETRY_INITIAL_S", 0.001)
    hook_server.statuses = statuses
    target = webhook(retries=3)
    target.url = f"{hook_server.url}/hook"
    assert Alerts._deliver(target, EVENT) == expected
    assert json.loads(hook_server.posted("/hook")[0])["event"] == "rows_in_memory"


def test_a_webhook_that_is_down_is_given_up_on_naming_no_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ops.alerts.RETRY_INITIAL_S", 0.001)
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_address[1]
    target = webhook(retries=1, timeout_s=1)
    target.url = f"http://127.0.0.1:{port}/T000/SECRET"
    attempts, error = Alerts._deliver(target, EVENT)
    assert attempts == 2 and error is not None and "SECRET" not in error and "Connection" in error
