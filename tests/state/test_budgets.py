"""Budgets of clients and teams (state/budgets.py), the same on both engines (`location`)."""

import multiprocessing
import threading
from datetime import UTC, datetime

import pytest

from state.budgets import BudgetLedger, period_bounds, period_key
from state.store import open_store
from state.writer import CallRecord, RecordWriter
from tests.state.engines import location

__all__ = ["location"]

NOW = datetime(2026, 11, 25, 15, 30, tzinfo=UTC).timestamp()  # a Wednesday


def ledger(location, clock=lambda: NOW, **kw):
    return BudgetLedger(open_store(location).connect(), clock=clock, **kw)


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("day", "2026-11-25T00:00:00+00:00", "2026-11-26T00:00:00+00:00"),
        ("week", "2026-11-23T00:00:00+00:00", "2026-11-30T00:00:00+00:00"),
        ("month", "2026-11-01T00:00:00+00:00", "2026-12-01T00:00:00+00:00"),
    ],
)
def test_period_bounds(period, start, end):
    got = period_bounds(period, datetime.fromtimestamp(NOW, UTC))
    assert (got[0].isoformat(), got[1].isoformat()) == (start, end)


def test_total_never_resets():
    assert period_bounds("total", datetime.fromtimestamp(NOW, UTC)) == (None, None)
    assert period_key("total", datetime.fromtimestamp(NOW, UTC)) == "total:all"


def test_admit_until_spent_then_refuse_with_reason(location):
    budgets = ledger(location)
    assert budgets.admit("c1", "alice", 0.6, 1.0, "day").admitted
    refused = budgets.admit("c2", "alice", 0.6, 1.0, "day")
    assert not refused.admitted
    message = refused.refusal()
    assert "alice" in message and "$1.00 per day" in message and "2026-11-26T00:00:00+00:00" in message
    assert refused.reserved_usd == pytest.approx(0.6)


def test_settle_and_refund_through_the_writer(location):
    budgets = ledger(location)
    budgets.sync_budgets({"alice": (1.0, "day")})
    assert budgets.admit("c1", "alice", 0.6, 1.0, "day").admitted
    assert budgets.admit("c2", "alice", 0.3, 1.0, "day").admitted
    writer = RecordWriter(open_store(location).connect)
    writer.start()
    row = {"started_at": "2026-11-25T15:30:00+00:00", "host": "h", "path": "/v1/messages", "stream": 0}
    writer.put(CallRecord(row={**row, "id": "c1"}, budget=("settled", 0.05)))
    writer.put(CallRecord(row={**row, "id": "c2"}, budget=("refunded", 0.0)))
    writer.close()
    [status] = budgets.status()
    assert (status.spent_usd, status.reserved_usd) == (pytest.approx(0.05), 0.0)
    assert budgets.admit("c3", "alice", 0.9, 1.0, "day").admitted


def test_a_new_period_starts_empty_and_old_holds_do_not_leak_into_it(location):
    now = [NOW]
    budgets = ledger(location, clock=lambda: now[0])
    assert budgets.admit("c1", "alice", 1.0, 1.0, "day").admitted
    assert not budgets.admit("c2", "alice", 0.1, 1.0, "day").admitted
    now[0] = NOW + 86_400
    assert budgets.admit("c3", "alice", 1.0, 1.0, "day").admitted


def test_holds_of_a_crashed_process_expire(location):
    now = [NOW]
    budgets = ledger(location, clock=lambda: now[0], hold_ttl_s=60)
    assert budgets.admit("c1", "alice", 1.0, 1.0, "total").admitted
    now[0] += 61
    assert budgets.admit("c2", "alice", 1.0, 1.0, "total").admitted
    with open_store(location).reading() as db:
        assert db.execute("select state from budget_holds where id = 'c1'").fetchone() == ("expired",)


def test_fifty_concurrent_admissions_never_overspend(location):
    budgets = ledger(location)
    assert budgets.admit("seed", "alice", 0.95, 1.0, "day").admitted  # nearly spent
    results = []
    barrier = threading.Barrier(50)

    def attempt(i):
        barrier.wait()
        results.append(budgets.admit(f"c{i}", "alice", 0.01, 1.0, "day").admitted)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 5
    [_, reserved] = budgets._sums("alice", period_key("day", datetime.fromtimestamp(NOW, UTC)))
    assert reserved <= 1.0 + 1e-9


def _admit_many(path: str, prefix: str, count: int, out) -> None:
    budgets = BudgetLedger(open_store(path).connect(), clock=lambda: NOW)
    out.put(sum(budgets.admit(f"{prefix}{i}", "alice", 0.01, 1.0, "day").admitted for i in range(count)))


def test_two_processes_share_one_budget(location):
    path = location
    ledger(path).admit("seed", "alice", 0.9, 1.0, "day")
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=_admit_many, args=(path, p, 25, out)) for p in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert out.get(timeout=5) + out.get(timeout=5) == 10


@pytest.mark.parametrize("estimate", [0.0, -1.0, float("nan"), float("inf")])
def test_a_hold_of_nothing_is_never_admitted(location, estimate):
    budgets = ledger(location)
    with pytest.raises(ValueError, match="positive amount"):
        budgets.admit("c1", "alice", estimate, 1.0, "day")
    assert budgets.admit("c2", "alice", 1.0, 1.0, "day").admitted  # nothing was held by the refusal


@pytest.mark.parametrize(
    ("amount", "shown"),
    [(20, "$20.00"), (0.0001, "$0.0001"), (1.005, "$1.005"), (1234.5, "$1,234.50")],
)
def test_a_budget_is_shown_with_every_digit_it_has(amount: float, shown: str) -> None:
    from state.budgets import budget_usd

    assert budget_usd(amount) == shown


def test_a_team_budget_binds_its_members_together_in_its_own_period(location):
    from state.budgets import TeamBudget

    budgets = ledger(location)
    budgets.sync_budgets({"alice": (1.0, "day")}, {"ci": (1.5, "month", ["alice", "bob"])})
    team = TeamBudget("ci", 1.5, "month")
    assert budgets.admit("a1", "alice", 0.9, 1.0, "day", team=team).admitted
    assert budgets.admit("b1", "bob", 0.5, None, "day", team=team).admitted
    refused = budgets.admit("b2", "bob", 0.2, None, "day", team=team)
    assert not refused.admitted and refused.team == "ci" and refused.limit == "team budget"
    assert "budget exhausted for team ci (client bob): $1.50 per month" in refused.refusal()
    assert "2026-12-01T00:00:00+00:00" in refused.refusal()
    own = budgets.admit("a2", "alice", 0.2, 1.0, "day", team=team)
    assert not own.admitted and own.team is None  # alice's own budget refuses first
    [spend] = budgets.team_status()
    assert (spend.team, spend.members, spend.reserved_usd) == ("ci", ("alice", "bob"), pytest.approx(1.4))


def test_fifty_concurrent_admissions_never_overspend_a_team(location):
    from state.budgets import TeamBudget

    budgets = ledger(location)
    team = TeamBudget("ci", 1.0, "day")
    results = []
    barrier = threading.Barrier(50)

    def attempt(i):
        barrier.wait()
        client = "alice" if i % 2 else "bob"
        results.append(budgets.admit(f"c{i}", client, 0.1, None, "day", team=team).admitted)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 10


def test_a_budget_enforced_mid_stream_admits_with_what_is_left(location):
    from state.budgets import TeamBudget

    budgets = ledger(location)
    assert budgets.admit("c1", "alice", 0.7, 1.0, "day").admitted
    capped = budgets.admit("c2", "alice", 0.5, 1.0, "day", minimum_usd=0.01)
    assert capped.admitted and capped.capped and capped.hold_usd == pytest.approx(0.3)
    refused = budgets.admit("c3", "alice", 0.5, 1.0, "day", minimum_usd=0.01)
    assert not refused.admitted  # nothing left for even the input
    team = TeamBudget("ci", 0.8, "day")  # the least left of the client's budget and its team's is held
    capped = budgets.admit("b1", "bob", 0.9, 2.0, "day", team=team, minimum_usd=0.01)
    assert capped.capped and capped.hold_usd == pytest.approx(0.8)
    whole = budgets.admit("b2", "carol", 0.1, 2.0, "day", minimum_usd=0.01)
    assert whole.admitted and not whole.capped and whole.hold_usd == 0.1


def _admit_team(path: str, client: str, count: int, out) -> None:
    from state.budgets import TeamBudget

    budgets = BudgetLedger(open_store(path).connect(), clock=lambda: NOW)
    team = TeamBudget("ci", 1.0, "day")
    out.put(
        sum(budgets.admit(f"{client}{i}", client, 0.1, None, "day", team=team).admitted for i in range(count))
    )


def test_two_processes_share_one_team_budget(location):
    path = location
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [
        context.Process(target=_admit_team, args=(path, client, 25, out)) for client in ("alice", "bob")
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert out.get(timeout=5) + out.get(timeout=5) == 10
