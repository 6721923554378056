"""Rate limits of clients and teams, shared through the database (state/rates.py)."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from state.rates import RateLedger, RateScope, uncountable_input
from state.store import open_store
from state.writer import CallRecord, RecordWriter
from tests.state.engines import location

__all__ = ["location"]

NOW = 1_800_000_000.0


def ledger(path, now, owner="proxy-a", **kw) -> RateLedger:
    return RateLedger(open_store(path).connect(), owner=owner, clock=lambda: now[0], **kw)


def admit(rates: RateLedger, call: str, scopes, client="alice", team=None, tokens=(100, 1000)):
    return rates.admit(call, client, team, tokens[0], tokens[1], scopes)


def test_requests_per_minute_refuse_with_the_time_the_oldest_leaves(location):
    now = [NOW]
    rates = ledger(location, now)
    scope = [RateScope("client", "alice", rpm=3)]
    for i in range(3):
        assert admit(rates, f"c{i}", scope) is None
        now[0] += 10
    refused = admit(rates, "c3", scope)
    assert refused is not None and (refused.limit, refused.value, refused.used) == ("rpm", 3, 3)
    assert refused.retry_after_s == pytest.approx(30.0)  # c0 was admitted at NOW and leaves at NOW + 60
    assert "3 requests per minute, 3 used in the last minute; room again in 30 s" in refused.message()
    assert refused.note() == "refused: rate limit (client alice: rpm 3, 3 used, retry in 30 s)"
    now[0] = NOW + 60.5
    assert admit(rates, "c4", scope) is None  # c0 has left the window


def test_tokens_per_minute_count_estimates_then_settle_to_actual_usage(location):
    now = [NOW]
    path = location
    rates = ledger(path, now)
    scope = [RateScope("client", "alice", output_tpm=2500)]
    assert admit(rates, "c1", scope, tokens=(10, 1000)) is None
    assert admit(rates, "c2", scope, tokens=(10, 1000)) is None
    refused = admit(rates, "c3", scope, tokens=(10, 1000))
    assert refused is not None and (refused.limit, refused.used) == ("output_tpm", 2000)
    writer = RecordWriter(open_store(path).connect)
    writer.start()
    row = {"started_at": "2026-01-15T08:00:00+00:00", "host": "h", "path": "/v1/messages", "stream": 0}
    writer.put(CallRecord(row={**row, "id": "c1"}, rate=(12, 40)))  # used far less than its ceiling
    writer.put(CallRecord(row={**row, "id": "c2"}, rate=(None, None)))  # no usage seen: estimate stands
    writer.close()
    assert admit(rates, "c3", scope, tokens=(10, 1000)) is None  # 40 + 1000 + 1000 fit
    [use] = rates.use([("client", "alice")])
    assert (use.requests, use.input_tokens, use.output_tokens, use.in_flight) == (3, 32, 2040, 1)


def test_a_call_larger_than_a_limit_is_refused_for_good(location):
    rates = ledger(location, [NOW])
    refused = admit(rates, "c1", [RateScope("client", "alice", output_tpm=500)], tokens=(10, 1000))
    assert refused is not None and refused.never_fits and refused.retry_after_s is None
    assert "needs 1,000, more than the limit: it cannot be admitted" in refused.message()


def test_calls_at_once_count_open_calls_until_their_rows_are_written(location):
    now = [NOW]
    path = location
    rates = ledger(path, now)
    scope = [RateScope("client", "alice", concurrent=2)]
    assert admit(rates, "c1", scope) is None
    assert admit(rates, "c2", scope) is None
    refused = admit(rates, "c3", scope)
    assert refused is not None and (refused.limit, refused.used) == ("concurrent", 2)
    assert "2 in flight; retry when one ends" in refused.message()
    rates.release("c2")  # refused after admission by another limit: it never went upstream
    assert admit(rates, "c3", scope) is None


def test_a_crashed_proxys_open_calls_stop_counting(location):
    now = [NOW]
    path = location
    crashed = ledger(path, now, owner="crashed", owner_stale_s=45)
    alive = ledger(path, now, owner="alive", owner_stale_s=45)
    scope = [RateScope("client", "alice", concurrent=1)]
    assert admit(crashed, "c1", scope) is None
    assert admit(alive, "c2", scope) is not None
    now[0] += 30
    alive.heartbeat()
    assert admit(alive, "c2", scope) is not None  # the other proxy may only be slow
    now[0] += 20  # 50 s since the crashed proxy was last seen
    assert admit(alive, "c2", scope) is None
    now[0] += 40
    alive.heartbeat()
    assert admit(alive, "c3", scope) is not None  # a live proxy's long call keeps counting


def test_a_team_limit_binds_its_members_together(location):
    rates = ledger(location, [NOW])
    team = RateScope("team", "ci", rpm=2)
    assert admit(rates, "a1", [RateScope("client", "alice", rpm=5), team], team="ci") is None
    assert admit(rates, "b1", [RateScope("client", "bob"), team], client="bob", team="ci") is None
    refused = admit(rates, "b2", [RateScope("client", "bob"), team], client="bob", team="ci")
    assert refused is not None and (refused.kind, refused.name, refused.limit) == ("team", "ci", "rpm")
    assert admit(rates, "c1", [RateScope("client", "carol", rpm=5)], client="carol") is None


def test_fifty_concurrent_admissions_never_pass_a_limit(location):
    rates = ledger(location, [NOW])
    scope = [RateScope("client", "alice", rpm=7)]
    results: list[bool] = []
    barrier = threading.Barrier(50)

    def attempt(i: int) -> None:
        barrier.wait()
        results.append(admit(rates, f"c{i}", scope) is None)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 7


def _admit_many(path: str, prefix: str, count: int, out) -> None:
    rates = RateLedger(open_store(path).connect(), owner=prefix, clock=lambda: NOW)
    scope = [RateScope("client", "alice", concurrent=9)]
    out.put(sum(rates.admit(f"{prefix}{i}", "alice", None, 1, 1, scope) is None for i in range(count)))


def test_two_processes_share_one_limit(location):
    path = location
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=_admit_many, args=(path, p, 25, out)) for p in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert out.get(timeout=5) + out.get(timeout=5) == 9


def test_window_use_is_the_most_room_any_usable_credential_has(location):
    from datetime import UTC, datetime, timedelta

    from state.budgets import serialized
    from state.rates import window_use

    store = open_store(location)
    db = store.connect()
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    readings = {"keys[0]": "0.9", "keys[1]": "0.7", "keys[2]": "0.1", "keys[9]": "0.0"}  # 9: not configured
    with serialized(db, ["test"]):  # committed, on either engine
        later = int((now + timedelta(hours=2)).timestamp())
        db.conn.executemany(
            "insert into credentials (host, fingerprint, label, position, kind, state) "
            "values (?, ?, ?, ?, 'key', ?)",
            [
                ("api.anthropic.com", f"sha256:{n}", f"keys[{n}]", n, state)
                for n, state in ((0, "active"), (1, "cooling"), (2, "disabled"))
            ],
        )
        db.conn.executemany(
            "insert into rate_limits (host, credential, header, value, observed_at, call_id) "
            "values ('api.anthropic.com', ?, ?, ?, ?, 'c')",
            [
                (label, header, value, now.isoformat())
                for label, used in readings.items()
                for header, value in (
                    ("anthropic-ratelimit-unified-5h-utilization", used),
                    ("anthropic-ratelimit-unified-5h-reset", str(later)),
                )
            ],
        )
    with store.reading() as reader:  # as the proxy reads it: another connection
        [use] = window_use(reader, "api.anthropic.com", ["5h", "7d"], now)
        [reset] = window_use(reader, "api.anthropic.com", ["5h"], now + timedelta(hours=3))
    assert (use.window, use.utilization, use.resets_at) == ("5h", 0.7, datetime.fromtimestamp(later, UTC))
    assert reset.utilization == 0.0  # the window has reset since it was read


def test_the_retry_after_of_a_token_limit_is_the_moment_the_call_fits_and_not_before(location):
    now = [NOW]
    rates = ledger(location, now)
    scope = [RateScope("client", "alice", input_tpm=1000)]
    for i, at in enumerate((0.0, 7.5, 20.25)):
        now[0] = NOW + at
        assert admit(rates, f"c{i}", scope, tokens=(300, 1)) is None
    now[0] = NOW + 30
    refused = admit(rates, "late", scope, tokens=(700, 1))  # needs c0 and c1 gone: 900 + 700 - 1000 = 600
    assert refused is not None and refused.retry_after_s == pytest.approx(37.5)
    now[0] = NOW + 30 + refused.retry_after_s - 0.01
    assert admit(rates, "early", scope, tokens=(700, 1)) is not None  # an SDK that came back early waits more
    now[0] = NOW + 30 + refused.retry_after_s
    assert admit(rates, "on time", scope, tokens=(700, 1)) is None  # one that waited as told gets through


def test_a_body_whose_input_cannot_be_counted_is_refused_by_an_input_limit_only():
    scopes = [RateScope("client", "alice", rpm=5), RateScope("team", "ops", input_tpm=2000)]
    refused = uncountable_input(scopes, "gzip")
    assert refused is not None and (refused.kind, refused.name, refused.limit) == ("team", "ops", "input_tpm")
    assert refused.never_fits and refused.retry_after_s is None
    assert "2,000 input tokens per minute; its body is compressed (gzip)" in refused.message()
    assert refused.note().startswith("refused: rate limit (team ops: input_tpm 2000, 0 used, not countable")
    assert uncountable_input([RateScope("client", "alice", rpm=5, output_tpm=10)], "br") is None


def test_an_admission_never_settled_stops_holding_a_slot_after_an_hour(location):
    now = [NOW]
    rates = ledger(location, now)
    scope = [RateScope("client", "alice", concurrent=1)]
    assert admit(rates, "lost", scope) is None  # its row never comes (the flow went while it was admitted)
    now[0] += 3000
    rates.heartbeat()
    assert admit(rates, "next", scope) is not None
    now[0] += 601
    rates.heartbeat()
    assert admit(rates, "next", scope) is None
