"""Budgets and rate limits of proxies on one PostgreSQL database: real concurrency (threads, each with its
own connection, and processes, each opening the store itself) and the database going away."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg
import pytest

from state.budgets import RECONNECT_S, BudgetLedger, BudgetUnknown, TeamBudget, period_key
from state.rates import RateLedger, RateScope
from state.store import open_store
from state.writer import CallRecord, RecordWriter
from tests.postgres import PostgresServer

NOW = datetime(2026, 11, 25, 15, 30, tzinfo=UTC).timestamp()
DAY = period_key("day", datetime.fromtimestamp(NOW, UTC))
# Amounts a float holds exactly: how many fit a budget does not depend on rounding.
HOLD = 0.0625
OWN = 20 * HOLD  # alice's own budget
TEAM = TeamBudget("ci", 30 * HOLD, "day")  # alice's and bob's
RPM = 17
THREADS = 50
PROCESSES = 3
PER_PROCESS = 20
DEADLINE_S = 120.0


def _budget_attempt(url: str, call: str) -> bool:
    """One admission by a proxy of its own: alice against her budget and her team's, bob the team's."""
    budgets = BudgetLedger(open_store(url).connect(), clock=lambda: NOW)
    try:
        own = OWN if call.startswith("alice") else None
        return budgets.admit(call, call.split("-")[0], HOLD, own, "day", team=TEAM).admitted
    finally:
        budgets._db.close()


def _rate_attempt(url: str, call: str) -> bool:
    rates = RateLedger(open_store(url).connect(), owner=call, clock=lambda: NOW)
    scopes = [RateScope("client", "alice", rpm=RPM), RateScope("team", "ci", rpm=RPM + 5)]
    try:
        return rates.admit(call, "alice", "ci", 10, 10, scopes) is None
    finally:
        rates._db.close()


def _in_process(attempt_name: str, url: str, prefix: str, out: multiprocessing.Queue[int]) -> None:
    attempt = {"budget": _budget_attempt, "rate": _rate_attempt}[attempt_name]
    client = "alice" if prefix.endswith("a") else "bob"
    out.put(sum(attempt(url, f"{client}-{prefix}{i}") for i in range(PER_PROCESS)))


def _everyone(url: str, name: str, attempt: Callable[[str, str], bool]) -> int:
    """THREADS threads (each its own connection) and PROCESSES processes admit at once: how many got in."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [
        context.Process(target=_in_process, args=(name, url, prefix, out)) for prefix in ("pa", "pb", "qa")
    ][:PROCESSES]
    for worker in workers:
        worker.start()
    results: list[bool] = []
    barrier = threading.Barrier(THREADS)

    def thread(i: int) -> None:
        barrier.wait()
        results.append(attempt(url, f"{'alice' if i % 2 else 'bob'}-t{i}"))

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(THREADS)]
    for each in threads:
        each.start()
    for each in threads:
        each.join(DEADLINE_S)
    admitted = sum(results) + sum(out.get(timeout=DEADLINE_S) for _ in workers)
    for worker in workers:
        worker.join(DEADLINE_S)
        assert worker.exitcode == 0
    return admitted


def test_proxies_at_once_never_overspend_a_client_or_its_team(postgres_url: str) -> None:
    admitted = _everyone(postgres_url, "budget", _budget_attempt)
    with open_store(postgres_url).reading() as db:
        alice, team = db.execute(
            "select coalesce(sum(case when client = 'alice' then amount_usd end), 0), sum(amount_usd) "
            "from budget_holds where state = 'held' and team = 'ci' and team_period_key = ?",
            (DAY,),
        ).fetchone()
    assert alice <= OWN  # no more than alice's own budget
    # bob's attempts alone outnumber what the team's budget holds: it is filled exactly, never past
    assert team == TEAM.usd and admitted == 30


def test_proxies_at_once_admit_exactly_a_limit_of_requests_per_minute(postgres_url: str) -> None:
    assert _everyone(postgres_url, "rate", _rate_attempt) == RPM
    with open_store(postgres_url).reading() as db:
        assert db.execute("select count(*) from rate_admissions").fetchone() == (RPM,)


def _away_ledger(url: str, owner: str, now: list[float]) -> BudgetLedger:
    store = open_store(url)
    return BudgetLedger(store.connect(), connect=store.connect, owner=owner, clock=lambda: now[0])


def test_with_the_database_away_a_proxy_spends_only_its_share_of_what_was_left(
    start_postgres: Callable[[], PostgresServer], caplog: pytest.LogCaptureFixture
) -> None:
    """What each proxy may spend while the database is away is its share (among the proxies alive) of what
    was left when it last read the budget: together they cannot spend more than was left."""
    server = start_postgres()
    url = server.create_database()
    now = [NOW]
    one, two = _away_ledger(url, "one", now), _away_ledger(url, "two", now)
    budgets = {"alice": (1.0, "day")}
    assert two.admit("seen", "alice", 0.25, 1.0, "day").admitted
    for proxy in (one, two, one):
        proxy.refresh(budgets)  # each has seen the other alive, and read what is left: 0.75
    server.stop()
    caplog.set_level(logging.WARNING, logger="sluice")
    decided = [one.admit(f"one-{i}", "alice", 0.125, 1.0, "day") for i in range(4)]
    assert [a.admitted for a in decided] == [True, True, True, False]  # 0.75 / 2 proxies = 3 calls of 0.125
    refused = decided[-1].refusal()
    assert "the database is away" in refused and "share (1/2)" in refused and "$0.3750 it admitted" in refused
    assert one.away
    assert [a.admitted for a in (two.admit(f"two-{i}", "alice", 0.125, 1.0, "day") for i in range(4))] == [
        True,
        True,
        True,
        False,
    ]
    with pytest.raises(BudgetUnknown, match="has not read the budget"):
        one.admit("bob-1", "bob", 0.1, 1.0, "day")
    away = [r.getMessage() for r in caplog.records if "the database is away" in r.getMessage()]
    assert len(away) == 2 and "password" not in " ".join(away) and server.password not in caplog.text

    server.start()
    # The writer may settle a call before its proxy writes the hold it admitted meanwhile: one row either way.
    writer = RecordWriter(open_store(url).connect)
    writer.start()
    row = {"started_at": "2026-11-25T15:31:00+00:00", "host": "h", "path": "/v1/messages", "stream": 0}
    writer.put(CallRecord(row={**row, "id": "one-0"}, budget=("settled", 0.0625)))
    writer.close()
    now[0] += RECONNECT_S
    two.refresh(budgets)  # back: the holds it admitted meanwhile are written first
    assert not two.away and "the database is back" in caplog.text
    # one's own, written now, and two's: 0.0625 spent, 0.875 held; one more would pass the budget
    late = one.admit("one-late", "alice", 0.125, 1.0, "day")
    assert not late.admitted and late.away is None and not one.away
    assert (late.spent_usd, late.reserved_usd) == (0.0625, 0.875)
    with open_store(url).reading() as db:
        holds = {
            r["id"]: (r["client"], r["state"], r["amount_usd"])
            for r in db.query("select * from budget_holds")
        }
    assert holds["one-0"] == ("alice", "settled", 0.0625) and holds["two-2"] == ("alice", "held", 0.125)
    assert sum(amount for _, _, amount in holds.values()) <= 1.0  # never more than the budget
    assert len(holds) == 7


def test_holds_admitted_while_the_database_was_away_are_written_at_shutdown_or_said_lost(
    start_postgres: Callable[[], PostgresServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_postgres()
    url = server.create_database()
    now = [NOW]
    ledger = _away_ledger(url, "one", now)
    ledger.refresh({"alice": (1.0, "day")})
    server.stop()
    assert ledger.admit("away-1", "alice", 0.125, 1.0, "day").admitted and ledger.away
    caplog.set_level(logging.ERROR, logger="sluice")
    assert not ledger.write_back()  # still away: said, never silently dropped
    assert "1 holds admitted while the database was away could not be written" in caplog.text
    server.start()
    assert ledger.write_back()  # at shutdown, without waiting out the reconnect interval
    with open_store(url).reading() as db:
        assert db.execute("select client, amount_usd from budget_holds").fetchall() == [("alice", 0.125)]


def test_rate_limits_refuse_while_the_database_is_away_and_count_again_when_it_is_back(
    start_postgres: Callable[[], PostgresServer],
) -> None:
    """A limit the fleet shares cannot be counted without the database: admission fails (and sluice refuses
    the call, failing closed); once the server is back the same ledger counts again, on a new connection."""
    server = start_postgres()
    url = server.create_database()
    store = open_store(url)
    rates = RateLedger(store.connect(), owner="one", clock=lambda: NOW, connect=store.connect)
    scopes = [RateScope("client", "alice", rpm=2)]
    assert rates.admit("c1", "alice", None, 1, 1, scopes) is None
    server.stop()
    with pytest.raises(psycopg.OperationalError) as failed:
        rates.admit("c2", "alice", None, 1, 1, scopes)
    assert server.password not in str(failed.value)
    server.start()
    assert rates.admit("c2", "alice", None, 1, 1, scopes) is None
    refused = rates.admit("c3", "alice", None, 1, 1, scopes)
    assert refused is not None and (refused.limit, refused.used) == ("rpm", 2)
