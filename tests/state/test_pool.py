from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from rules.secrets import describe_reference, fingerprint
from state import store as sluice_db
from state.pool import RECONNECT_EVERY_S, Choice, CredentialEntry, CredentialPool
from state.store import Database, open_store
from tests.fake_clock import NOW, FakeClock

HOST = "api.anthropic.com"
SECRETS = ["sk-ant-api03-" + "a" * 40, "sk-ant-api03-" + "b" * 40, "sk-ant-api03-" + "c" * 40]


def entries(secrets: list[str] = SECRETS) -> list[CredentialEntry]:
    return [
        CredentialEntry(describe_reference(f"keys[{i}]", f"env:ANTHROPIC_KEY_{i + 1}"), fingerprint(secret))
        for i, secret in enumerate(secrets)
    ]


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "sluice.db"


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database the pool's contract is proven on: a SQLite file, and a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "sluice.db")
    return str(request.getfixturevalue("postgres_url"))


def connect(location: str | Path) -> Database:
    return open_store(location).connect()


def make_pool(location: str | Path, clock: FakeClock, **kwargs: float) -> CredentialPool:
    store = open_store(location)
    pool = CredentialPool(store.connect(), reconnect=store.connect, clock=clock, **kwargs)
    pool.sync_config(HOST, entries())
    return pool


def chosen(choice: Choice) -> str | None:
    return choice.credential.label if choice.credential else None


def test_first_usable_credential_in_order_with_failover(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    labels = [entry.label for entry in entries()]
    assert chosen(pool.choose(HOST)) == labels[0]
    assert chosen(pool.choose(HOST)) == labels[0]  # sticky: the prompt cache lives per key

    pool.report(
        HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "10"}, "Number of request tokens exceeded"
    )
    assert chosen(pool.choose(HOST)) == labels[1]
    pool.report(HOST, fingerprint(SECRETS[1]), 429, {"retry-after": "20"}, "Rate limited")
    assert chosen(pool.choose(HOST, routing="first")) == labels[2]

    clock.advance(10)
    assert chosen(pool.choose(HOST, routing="first")) == labels[0]  # back to the first once it has rested


def test_an_overloaded_provider_cools_no_key(location):
    pool = make_pool(location, FakeClock())
    assert pool.report(HOST, fingerprint(SECRETS[0]), 529, {}, "Overloaded") is None
    assert pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "5"}, "Overloaded") is not None
    assert [s.state for s in pool.states()] == ["cooling", "active", "active"]
    assert pool.events()[0].event == "cooled"


def test_all_cooling_gives_the_soonest_retry(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    for secret, seconds in zip(SECRETS, ["30", "5", "12"], strict=True):
        pool.report(HOST, fingerprint(secret), 429, {"retry-after": seconds})
    choice = pool.choose(HOST)
    assert choice.credential is None and choice.retry_after_s == pytest.approx(5)
    assert len(choice.reasons) == 3 and "cooling for 5s (429 rate limited)" in choice.reasons[1]


def test_401_disables_with_the_providers_reason(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    for secret in SECRETS:
        pool.report(HOST, fingerprint(secret), 401, {}, "invalid x-api-key")
    choice = pool.choose(HOST)
    assert choice.credential is None and choice.retry_after_s is None
    assert choice.reasons[0] == "keys[0] env:ANTHROPIC_KEY_1: disabled (401 invalid x-api-key)"

    # A later 429 does not bring a disabled key back, and time does not either.
    assert pool.report(HOST, fingerprint(SECRETS[0]), 429, {}) is None
    clock.advance(86400)
    assert pool.choose(HOST).credential is None
    assert [s.state for s in pool.states()] == ["disabled"] * 3


def test_only_a_terminal_403_disables_and_success_changes_nothing(location):
    pool = make_pool(location, FakeClock())
    assert pool.report(HOST, fingerprint(SECRETS[0]), 200, {}) is None
    assert pool.report(HOST, fingerprint(SECRETS[0]), 500, {"retry-after": "5"}) is None
    # A permission error may concern one model or feature: the key stays for the rest.
    assert pool.report(HOST, fingerprint(SECRETS[0]), 403, {}, "no permission for this resource") is None
    message = "OAuth authentication is currently not allowed for this organization."
    state = pool.report(HOST, fingerprint(SECRETS[0]), 403, {}, message)
    assert state is not None and state.state == "disabled" and state.reason == f"403 {message}"


def test_a_longer_cooldown_is_not_shortened(location):
    pool = make_pool(location, FakeClock())
    pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "100"})
    assert pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "5"}) is None
    assert pool.states()[0].cooling_until == NOW + 100


def test_state_survives_a_restart(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    pool.report(HOST, fingerprint(SECRETS[0]), 401, {}, "invalid x-api-key")
    pool.report(HOST, fingerprint(SECRETS[1]), 429, {"retry-after": "60"})

    restarted = make_pool(location, clock)
    assert chosen(restarted.choose(HOST)) == "keys[2] env:ANTHROPIC_KEY_3"
    states = {s.label: s for s in restarted.states()}
    assert states["keys[0] env:ANTHROPIC_KEY_1"].reason == "401 invalid x-api-key"
    assert states["keys[1] env:ANTHROPIC_KEY_2"].state == "cooling"
    assert [s.position for s in restarted.states()] == [0, 1, 2]


def test_two_processes_see_each_others_changes_within_the_refresh_interval(location):
    clock = FakeClock()
    first = make_pool(location, clock, refresh_every=1.0)
    second = make_pool(location, clock, refresh_every=1.0)
    assert chosen(second.choose(HOST)) == "keys[0] env:ANTHROPIC_KEY_1"

    first.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "60"})
    assert chosen(first.choose(HOST)) == "keys[1] env:ANTHROPIC_KEY_2"  # the writer sees it at once
    clock.advance(1.0)
    assert chosen(second.choose(HOST)) == "keys[1] env:ANTHROPIC_KEY_2"

    second.reset(HOST, "keys[0] env:ANTHROPIC_KEY_1")
    clock.advance(1.0)
    assert chosen(first.choose(HOST)) == "keys[0] env:ANTHROPIC_KEY_1"


def test_a_wall_clock_set_back_does_not_keep_a_process_on_an_old_view(location):
    """How old this process's view is, is measured on the monotonic clock: a wall clock set back an hour must
    not hide another process's change for that hour."""
    clock = FakeClock()
    first = make_pool(location, clock, refresh_every=1.0)
    second = make_pool(location, clock, refresh_every=1.0)
    assert chosen(second.choose(HOST)) == "keys[0] env:ANTHROPIC_KEY_1"
    clock.set_wall(NOW - 3600)
    first.report(HOST, fingerprint(SECRETS[0]), 401, {}, "invalid x-api-key")
    clock.advance(1.0)
    assert chosen(second.choose(HOST)) == "keys[1] env:ANTHROPIC_KEY_2"


def test_a_new_secret_under_the_same_label_is_a_new_credential(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    pool.report(HOST, fingerprint(SECRETS[0]), 401, {}, "invalid x-api-key")
    rotated = ["sk-ant-api03-" + "d" * 40, *SECRETS[1:]]
    pool.sync_config(HOST, entries(rotated))
    choice = pool.choose(HOST)
    assert choice.credential is not None and choice.credential.fingerprint == fingerprint(rotated[0])
    # the old secret's row stays, disabled and no longer configured
    old = next(s for s in pool.states() if s.fingerprint == fingerprint(SECRETS[0]))
    assert old.state == "disabled" and old.position is None


def test_reset_by_label_or_fingerprint(location):
    pool = make_pool(location, FakeClock())
    pool.report(HOST, fingerprint(SECRETS[0]), 401, {}, "invalid x-api-key")
    pool.report(HOST, fingerprint(SECRETS[1]), 429, {})
    assert pool.reset(HOST, "no such label") == []
    [reset] = pool.reset(HOST, "keys[0] env:ANTHROPIC_KEY_1")
    assert reset.state == "active" and reset.reason is None
    assert [s.label for s in pool.reset(HOST, fingerprint(SECRETS[1]))] == ["keys[1] env:ANTHROPIC_KEY_2"]
    assert [s.state for s in pool.states()] == ["active"] * 3


def test_the_same_secret_twice_is_a_config_error(location):
    pool = CredentialPool(connect(location))
    with pytest.raises(ValueError, match=r"keys\[0\] env:ANTHROPIC_KEY_1 and keys\[1\] env:ANTHROPIC_KEY_2"):
        pool.sync_config(HOST, entries([SECRETS[0], SECRETS[0]]))


def test_unknown_host_has_no_credentials(location):
    choice = make_pool(location, FakeClock()).choose("api.openai.com")
    assert choice == Choice(reasons=("no credentials configured for api.openai.com",))


def test_a_refused_write_is_still_honoured_by_this_process(sqlite_path, caplog):
    make_pool(sqlite_path, FakeClock())
    pool = CredentialPool(sluice_db.connect(sqlite_path, busy_timeout_ms=50), clock=FakeClock())
    pool.sync_config(HOST, entries())
    blocker = sqlite3.connect(sqlite_path, isolation_level=None)
    blocker.execute("begin immediate")  # another process sits on the write lock
    try:
        state = pool.report(HOST, fingerprint(SECRETS[0]), 401, {}, "invalid x-api-key")
        assert state is not None and state.state == "disabled"
        assert chosen(pool.choose(HOST)) == "keys[1] env:ANTHROPIC_KEY_2"
        assert "only this process will honour it" in caplog.text
    finally:
        blocker.execute("rollback")
    assert [s.state for s in pool.states()] == ["active"] * 3  # the database never heard of it


def test_a_conversation_stays_on_its_key_after_an_earlier_key_recovers(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    labels = [entry.label for entry in entries()]
    pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "10"}, "Rate limited")
    choice = pool.choose(HOST, "conversation-a")
    assert chosen(choice) == labels[1] and choice.pin and choice.moved_from is None
    assert choice.credential is not None
    pool.pin(HOST, "conversation-a", choice.credential)

    clock.advance(11)  # keys[0] has rested
    again = pool.choose(HOST, "conversation-a")
    assert chosen(again) == labels[1] and not again.pin  # its prompt cache is on keys[1]
    assert chosen(pool.choose(HOST, "conversation-a", routing="first")) == labels[0]
    assert chosen(pool.choose(HOST, "conversation-b")) == labels[0]


def test_a_conversation_moves_only_when_its_key_cools_and_the_move_is_recorded(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    labels = [entry.label for entry in entries()]
    first = pool.choose(HOST, "conversation-a")
    assert first.credential is not None
    pool.pin(HOST, "conversation-a", first.credential)
    pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "60"}, "Rate limited")

    moved = pool.choose(HOST, "conversation-a")
    assert chosen(moved) == labels[1] and moved.moved_from == first.credential and moved.pin
    assert moved.credential is not None
    pool.pin(HOST, "conversation-a", moved.credential, moved.moved_from)
    event = pool.events()[0]
    assert event.event == "conversation_moved" and event.label == labels[1]
    assert event.detail is not None and labels[0] in event.detail
    assert "cooling: 429 Rate limited" in event.detail


def test_new_conversations_go_to_the_key_with_the_most_headroom(location):
    pool = make_pool(location, FakeClock())
    labels = [entry.label for entry in entries()]
    pool.record_limits(HOST, fingerprint(SECRETS[0]), "allowed", 0.2)
    pool.record_limits(HOST, fingerprint(SECRETS[1]), "allowed", 0.7)
    pool.record_limits(HOST, fingerprint(SECRETS[2]), "allowed", 0.5)
    assert chosen(pool.choose(HOST, "new")) == labels[1]
    assert chosen(pool.choose(HOST, "new", routing="first")) == labels[0]


def test_a_key_that_has_not_reported_counts_as_having_all_its_room(location):
    pool = make_pool(location, FakeClock())
    pool.record_limits(HOST, fingerprint(SECRETS[0]), None, 0.99)
    assert chosen(pool.choose(HOST, "new")) == entries()[1].label


def test_which_key_a_conversation_is_on_is_shared_and_forgotten_after_an_hour(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    other = make_pool(location, clock)
    pool.pin(HOST, "conversation-a", entries()[2])
    assert chosen(other.choose(HOST, "conversation-a")) == entries()[2].label
    clock.advance(3601)
    assert chosen(make_pool(location, clock).choose(HOST, "conversation-a")) == entries()[0].label


def test_conversations_remembered_in_memory_are_bounded(location):
    pool = CredentialPool(connect(location), clock=FakeClock(), max_conversations=3)
    pool.sync_config(HOST, entries())
    for number in range(10):
        pool.pin(HOST, f"conversation-{number}", entries()[1])
    assert len(pool._pinned) == 3
    assert chosen(pool.choose(HOST, "conversation-0")) == entries()[1].label  # read back from the database


def test_choosing_never_waits_for_a_write_another_process_holds_up(sqlite_path):
    """`choose` runs on the event loop. A write of this process (a conversation's pin, new limits) that waits
    for another process's write lock must not make it wait too: every request would stall behind it."""
    clock = FakeClock()
    pool = CredentialPool(sluice_db.connect(sqlite_path, busy_timeout_ms=5_000), clock=clock, refresh_every=0)
    pool.sync_config(HOST, entries())
    pool.pin(HOST, "conversation-old", entries()[2])
    elsewhere = sqlite3.connect(sqlite_path, isolation_level=None)
    elsewhere.execute("begin immediate")  # another proxy on the same database, writing
    writer = threading.Thread(target=pool.pin, args=(HOST, "conversation-new", entries()[1]))
    writer.start()
    try:
        deadline = time.monotonic() + 5
        while not pool._lock.locked():  # the writer is in, waiting for the database
            assert time.monotonic() < deadline, "the pin never started"
            time.sleep(0.001)
        started = time.monotonic()
        remembered = pool.choose(HOST, "conversation-old")  # known in memory: still on its key
        unseen = pool.choose(HOST, "conversation-unseen")  # not read here: placed, not waited for
        plain = pool.choose(HOST)
        assert time.monotonic() - started < 2.5  # the writer waits up to 5 s
        assert writer.is_alive()
    finally:
        elsewhere.execute("rollback")
        elsewhere.close()
        writer.join()
    assert chosen(remembered) == entries()[2].label
    assert chosen(unseen) == chosen(plain) == entries()[0].label
    assert unseen.pin  # placed as a new conversation, here and (in the background) in the database
    assert chosen(make_pool(sqlite_path, clock).choose(HOST, "conversation-new")) == entries()[1].label


def test_limits_are_written_only_when_they_change(location):
    pool = make_pool(location, FakeClock())
    fp = fingerprint(SECRETS[0])
    assert pool.limits_changed(HOST, fp, "allowed", 0.9)
    pool.record_limits(HOST, fp, "allowed", 0.9)
    assert not pool.limits_changed(HOST, fp, "allowed", 0.88)
    assert not pool.limits_changed(HOST, fp, None, None)
    assert pool.limits_changed(HOST, fp, "allowed", 0.8)
    assert pool.limits_changed(HOST, fp, "allowed_warning", 0.9)
    pool.record_limits(HOST, fp, "allowed_warning", 0.1)
    pool.record_limits(HOST, fp, "rejected", 0.0)
    pool.record_limits(HOST, fp, "allowed", 0.8)
    details = [e.detail for e in reversed(pool.events()) if e.event == "quota"]
    assert details == [
        "subscription status unknown → allowed",
        "subscription status allowed → allowed_warning",
        "subscription status allowed_warning → rejected",
        "subscription status rejected → allowed",
    ]
    state = pool.states()[0]
    assert state.quota_status == "allowed" and state.headroom == pytest.approx(0.8)


def test_a_good_answer_after_a_cooldown_records_the_recovery(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    fp = fingerprint(SECRETS[0])
    pool.report(HOST, fp, 429, {"retry-after": "10"}, "Rate limited")
    assert pool.needs_recovery(HOST, fp)
    assert pool.recover(HOST, fp) is None  # not rested yet
    clock.advance(10)
    state = pool.recover(HOST, fp)
    assert state is not None and state.state == "active"
    assert not pool.needs_recovery(HOST, fp)
    assert [e.event for e in pool.events()] == ["recovered", "cooled"]


def test_the_history_says_what_happened_and_why_never_a_secret(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    window = {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-reset": str(int(NOW) + 3600),
    }
    pool.report(HOST, fingerprint(SECRETS[0]), 429, window, "This request would exceed your rate limit")
    pool.report(HOST, fingerprint(SECRETS[1]), 401, {}, f"Incorrect API key provided: {SECRETS[1]}")
    pool.reset(HOST, entries()[1].label)
    pool.record_event(HOST, "overloaded", "529 Overloaded: answering clients for 5s")
    events = pool.events()
    assert [e.event for e in events] == ["overloaded", "reset", "disabled", "window_exhausted"]
    assert events[3].until == NOW + 3600
    assert events[3].detail is not None and "five_hour window exhausted until" in events[3].detail
    assert events[1].detail == "reset by hand (was disabled: 401 Incorrect API key provided: sk-ant…)"
    assert events[0].fingerprint is None
    assert not any(secret in dump(location) for secret in SECRETS)


def test_a_burst_of_new_conversations_spreads_over_the_keys(location):
    pool = make_pool(location, FakeClock())
    chosen_keys = [chosen(pool.choose(HOST, f"conversation-{n}")) for n in range(6)]
    assert sorted(chosen_keys) == sorted([e.label for e in entries()] * 2)


def test_conversations_moved_off_a_resting_key_spread_over_the_others(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    for n in range(6):
        pool.choose(HOST, f"conversation-{n}")
    on_first = [
        n
        for n in range(6)
        if pool._pinned[(HOST, f"conversation-{n}")].fingerprint == entries()[0].fingerprint
    ]
    pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "60"}, "Rate limited")
    moved = [chosen(pool.choose(HOST, f"conversation-{n}")) for n in on_first]
    assert sorted(moved) == [entries()[1].label, entries()[2].label]


def test_idle_conversations_stop_counting_against_their_key(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    for n in range(3):
        pool.choose(HOST, f"old-{n}")
    clock.advance(3601)
    assert chosen(pool.choose(HOST, "new")) == entries()[0].label
    assert pool._conversations == {(HOST, fingerprint(SECRETS[0])): 1}


def test_a_rest_forgets_the_room_a_key_reported_so_it_is_not_shunned_once_usable(location):
    clock = FakeClock()
    pool = make_pool(location, clock)
    for secret, room in zip(SECRETS, (0.0, 0.5, 0.5), strict=True):
        pool.record_limits(HOST, fingerprint(secret), "allowed", room)
    pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "5"}, "Rate limited")
    clock.advance(5)
    assert chosen(pool.choose(HOST, "new")) == entries()[0].label  # rested: its limit has reset
    other = make_pool(location, clock)  # and every process sees it so
    assert chosen(other.choose(HOST, "another")) == entries()[0].label


def test_limits_news_reads_the_headers_and_says_only_what_is_new(location):
    pool = make_pool(location, FakeClock())
    fp = fingerprint(SECRETS[0])
    headers = {
        "anthropic-ratelimit-unified-status": "allowed",
        "anthropic-ratelimit-unified-5h-utilization": "0.3",
    }
    assert pool.limits_news(HOST, fp, headers) == ("allowed", pytest.approx(0.7))
    pool.record_limits(HOST, fp, "allowed", 0.7)
    assert pool.limits_news(HOST, fp, headers) is None
    assert pool.limits_news(HOST, fp, {}) is None


def dump(location: str) -> str:
    """Every value of every table the pool writes, as text."""
    with open_store(location).reading() as db:
        return "\n".join(
            repr(row)
            for table in ("credentials", "credential_events", "credential_affinity")
            for row in db.execute(f"select * from {table}").fetchall()
        )


# -- PostgreSQL: proxies on many machines ----------------------------------------------------------------


def _cool_from_another_process(url: str, secret: str) -> None:
    store = open_store(url)
    pool = CredentialPool(store.connect(), reconnect=store.connect)
    pool.sync_config(HOST, entries())
    pool.report(HOST, fingerprint(secret), 429, {"retry-after": "600"}, "rate limited")
    pool.pin(HOST, "conversation-elsewhere", entries()[2])


def test_a_key_cooled_by_another_process_on_postgresql_is_seen_cooling(postgres_url):
    pool = make_pool(postgres_url, FakeClock(), refresh_every=0)
    assert chosen(pool.choose(HOST)) == entries()[0].label
    context = multiprocessing.get_context("spawn")
    other = context.Process(target=_cool_from_another_process, args=(postgres_url, SECRETS[0]))
    other.start()
    other.join(timeout=60)
    assert other.exitcode == 0

    real_now = time.time()  # the other process cooled it on the real clock
    choice = pool.choose(HOST, now=real_now)
    assert chosen(choice) == entries()[1].label
    [cooled] = [s for s in pool.states(now=real_now) if s.state == "cooling"]
    assert cooled.label == entries()[0].label and cooled.reason == "429 rate limited"
    assert chosen(pool.choose(HOST, "conversation-elsewhere", now=real_now)) == entries()[2].label


def test_with_postgresql_away_the_pool_decides_from_its_last_view_and_catches_up(start_postgres, caplog):
    server = start_postgres()
    url = server.create_database()
    clock = FakeClock()
    pool = make_pool(url, clock, refresh_every=0)
    pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "3600"})

    server.stop()
    assert chosen(pool.choose(HOST)) == entries()[1].label  # still knows key 1 is resting
    assert "using the last known ones" in caplog.text
    state = pool.report(HOST, fingerprint(SECRETS[1]), 401, {}, "invalid x-api-key")  # no crash
    assert state is not None and state.state == "disabled"
    assert "only this process will honour it" in caplog.text
    assert chosen(pool.choose(HOST)) == entries()[2].label
    assert server.password not in caplog.text

    server.start()
    other = make_pool(url, clock)  # another proxy, on the database again
    other.report(HOST, fingerprint(SECRETS[2]), 429, {"retry-after": "60"})
    deadline = time.monotonic() + 30
    while chosen(choice := pool.choose(HOST)) is not None:  # reconnected in the background; sees key 3 rest
        assert time.monotonic() < deadline, f"never saw the other proxy's change: {choice}"
        clock.advance(RECONNECT_EVERY_S)
        time.sleep(0.01)
    assert "can be read again" in caplog.text
