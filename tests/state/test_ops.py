"""state/ops.py: the snapshot of shared state the gauges and alerts read, and the alerts table."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from rules.secrets import fingerprint
from state import store as sluice_db
from state.budgets import BudgetLedger
from state.ops import AlertLog, OpsReader
from state.pool import CredentialEntry, CredentialPool
from state.writer import CallRecord, RecordWriter
from tests.fake_clock import FakeClock
from tests.state.engines import location

__all__ = ["location"]  # the engines' fixture: these tests run on SQLite and on PostgreSQL

HOST = "api.anthropic.com"
NOW = 1_800_000_000.0
ENTRIES = [
    CredentialEntry("keys[0] env:K1", fingerprint("sk-ant-api03-" + "a" * 40)),
    CredentialEntry("keys[1] env:K2", fingerprint("sk-ant-api03-" + "b" * 40)),
]


def test_a_snapshot_reads_the_pool_quotas_and_budgets_every_process_wrote(location: str) -> None:
    store = sluice_db.open_store(location)
    pool = CredentialPool(store.connect(), clock=FakeClock(NOW))
    pool.sync_config(HOST, ENTRIES)
    pool.disable(HOST, ENTRIES[0].fingerprint, "401 invalid x-api-key", now=NOW)
    pool.cool_down(HOST, ENTRIES[1].fingerprint, 30, "429 slow down", now=NOW)
    ledger = BudgetLedger(store.connect())
    ledger.sync_budgets({"alice": (20.0, "day")})
    writer = RecordWriter(store.connect)
    writer.start()
    observed = datetime.fromtimestamp(NOW, UTC).isoformat()
    writer.put(
        CallRecord(
            row={
                "id": "c1",
                "started_at": observed,
                "host": HOST,
                "method": "POST",
                "path": "/v1/messages",
                "stream": 0,
                "credential": "keys[1] env:K2",
            },
            rate_limits=[
                ("anthropic-ratelimit-unified-5h-utilization", "0.85"),
                ("anthropic-ratelimit-unified-5h-status", "allowed"),
                ("anthropic-ratelimit-unified-5h-reset", str(int(NOW) + 3600)),
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-requests-limit", "4000"),
                ("anthropic-ratelimit-requests-remaining", "3990"),
            ],
            host=HOST,
            credential="keys[1] env:K2",
            observed_at=observed,
        )
    )
    assert writer.flush()
    writer.close()

    snapshot = OpsReader(location).snapshot(now=NOW + 10)

    states = {c.label: (c.state, c.cooling_until) for c in snapshot.credentials}
    assert states == {"keys[0] env:K1": ("disabled", None), "keys[1] env:K2": ("cooling", NOW + 30)}
    windows = {w.window: (w.utilization, w.status) for w in snapshot.windows}
    assert windows == {"overall": (None, "rejected"), "5h": (0.85, "allowed")}
    [limit] = snapshot.limits
    assert (limit.limit_name, limit.remaining, limit.limit) == ("anthropic:requests", 3990, 4000)
    [budget] = snapshot.budgets
    assert (budget.client, budget.limit_usd, budget.spent_usd) == ("alice", 20.0, 0.0)
    assert snapshot.oauth_expires_at == ()


def test_a_snapshot_of_a_database_it_cannot_read_is_empty_not_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-db"
    folder.mkdir()
    (folder / "sluice.db").write_bytes(b"this is not sqlite" * 100)
    snapshot = OpsReader(folder / "sluice.db").snapshot(now=NOW)
    assert snapshot.credentials == () and snapshot.budgets == ()


def test_a_crossing_is_claimed_once_across_processes(location: str) -> None:
    store = sluice_db.open_store(location)
    logs = [AlertLog(store.connect()) for _ in range(4)]
    wins: list[bool] = []

    def claim(log: AlertLog) -> None:
        wins.append(
            log.claim(dedup="d1", webhook="w", at=NOW, event="quota_threshold", subject="s", message="m")
        )

    threads = [threading.Thread(target=claim, args=(log,)) for log in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(wins) == [False, False, False, True]
    assert logs[0].claim(dedup="d1", webhook="other webhook", at=NOW, event="e", subject="s", message="m")
    logs[0].finish(dedup="d1", webhook="w", delivered=False, attempts=4, error="ConnectionRefusedError")
    rows = store.connect().execute("select webhook, state, attempts, error from alerts order by webhook")
    assert [tuple(row) for row in rows.fetchall()] == [
        ("other webhook", "pending", 0, None),
        ("w", "failed", 4, "ConnectionRefusedError"),
    ]
