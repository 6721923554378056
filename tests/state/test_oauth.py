from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from rules.credential_files import OAuthTokens, TokenResponse
from state.oauth import CredentialDead, CredentialUnavailable, OAuthStore, TokenRefused
from state.store import AnyStore, open_store
from state.store.postgres import is_postgres
from tests.fake_clock import NOW, FakeClock

HOST = "api.anthropic.com"

EXPIRED = OAuthTokens("access-1", "refresh-1", NOW - 10)
FRESH = OAuthTokens("access-1", "refresh-1", NOW + 3600)


class FakeTokenEndpoint:
    """Rotates like a real one: each refresh token works once. It answers after `delay` seconds, so that
    callers arrive while a refresh is in flight; no outcome depends on how long it takes."""

    def __init__(self, delay: float = 0.05) -> None:
        self.calls: list[str] = []
        self.delay = delay
        self.spent: set[str] = set()

    async def __call__(self, refresh_token: str) -> TokenResponse:
        self.calls.append(refresh_token)
        await asyncio.sleep(self.delay)
        if refresh_token in self.spent:
            raise TokenRefused("invalid_grant", "Refresh token not found or invalid")
        self.spent.add(refresh_token)
        n = len(self.spent) + 1
        return TokenResponse(f"access-{n}", f"refresh-{n}", 3600)


@pytest.fixture(params=["sqlite", "postgres"])
def secrets(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the OAuth store's contract is proven: a SQLite secrets file, and a PostgreSQL database (its
    secrets schema). A string, so that a process of a test's own can be given it."""
    if request.param == "sqlite":
        return str(tmp_path / "sluice.secrets.db")
    return str(request.getfixturevalue("postgres_url"))


def source(secrets: str) -> str | AnyStore:
    """What an OAuthStore is opened on for `secrets`: the file, or the PostgreSQL store."""
    return open_store(secrets) if is_postgres(secrets) else secrets


def make_store(secrets: str, clock: FakeClock, **kwargs: float) -> OAuthStore:
    return OAuthStore(source(secrets), clock=clock, poll_s=0.01, **kwargs)


async def _counting_refresh(refresh_token: str, log_path: str) -> TokenResponse:
    with open(log_path, "a", encoding="utf-8") as log:  # O_APPEND: one short write per line is atomic
        log.write(f"{os.getpid()} {refresh_token}\n")
    await asyncio.sleep(0.3)
    return TokenResponse("access-2", "refresh-2", 3600)


def _process_main(secrets, log_path, barrier, results):
    store = OAuthStore(source(secrets), poll_s=0.02)

    async def refresh(refresh_token: str) -> TokenResponse:
        return await _counting_refresh(refresh_token, log_path)

    async def waiters() -> list[str]:
        outcomes = await asyncio.gather(
            *(store.access_token(HOST, refresh) for _ in range(25)), return_exceptions=True
        )
        return [o if isinstance(o, str) else f"{type(o).__name__}: {o}" for o in outcomes]

    barrier.wait()
    results.put(asyncio.run(waiters()))


def test_seeding_takes_only_tokens_the_store_has_never_seen(secrets):
    clock = FakeClock()
    endpoint = FakeTokenEndpoint(delay=0)
    store = make_store(secrets, clock)
    assert store.seed(HOST, EXPIRED) is True
    assert asyncio.run(store.access_token(HOST, endpoint)) == "access-2"

    # A restart with the same (now spent) file keeps the rotated tokens.
    restarted = make_store(secrets, clock)
    assert restarted.seed(HOST, EXPIRED) is False
    assert asyncio.run(restarted.access_token(HOST, endpoint)) == "access-2"

    # A new login wins...
    relogin = OAuthTokens("access-new", "refresh-new", NOW + 3600)
    assert restarted.seed(HOST, relogin) is True
    assert asyncio.run(restarted.access_token(HOST, endpoint)) == "access-new"
    # ...and a file restored from an old backup does not.
    assert restarted.seed(HOST, EXPIRED) is False
    assert asyncio.run(restarted.access_token(HOST, endpoint)) == "access-new"
    assert endpoint.calls == ["refresh-1"]


def test_a_new_login_seeded_by_another_process_is_picked_up(secrets):
    clock = FakeClock()
    serving = make_store(secrets, clock, recheck_s=30)
    serving.seed(HOST, OAuthTokens("access-1", "refresh-1", NOW + 3600))
    assert asyncio.run(serving.access_token(HOST, FakeTokenEndpoint())) == "access-1"

    make_store(secrets, clock).seed(HOST, OAuthTokens("access-new", "refresh-new", NOW + 3600))
    clock.advance(30)  # how stale the copy in memory of a still-fresh token may be
    assert asyncio.run(serving.access_token(HOST, FakeTokenEndpoint())) == "access-new"


def test_fifty_concurrent_requests_on_an_expired_token_refresh_once(secrets):
    clock = FakeClock()
    endpoint = FakeTokenEndpoint()
    store = make_store(secrets, clock)
    store.seed(HOST, EXPIRED)

    async def burst() -> list[str]:
        return await asyncio.gather(*(store.access_token(HOST, endpoint) for _ in range(50)))

    assert asyncio.run(burst()) == ["access-2"] * 50
    assert endpoint.calls == ["refresh-1"]
    status = store.status(HOST)
    assert status is not None and status.expires_at == NOW + 3600 and status.version == 2


def test_refresh_ahead_of_expiry_serves_the_current_token_meanwhile(secrets):
    clock = FakeClock()
    endpoint = FakeTokenEndpoint()
    store = make_store(secrets, clock)
    store.seed(HOST, OAuthTokens("access-1", "refresh-1", NOW + 120))  # inside the 5 min skew

    async def scenario() -> tuple[list[str], str]:
        first = await asyncio.gather(*(store.access_token(HOST, endpoint) for _ in range(10)))
        deadline = time.monotonic() + 10
        while (token := await store.access_token(HOST, endpoint)) == "access-1":  # refreshing meanwhile
            assert time.monotonic() < deadline, "the refresh ahead of expiry never landed"
            await asyncio.sleep(0.01)
        return first, token

    during, after = asyncio.run(scenario())
    assert during == ["access-1"] * 10 and after == "access-2"
    assert endpoint.calls == ["refresh-1"]


def test_a_response_without_refresh_token_keeps_the_old_one(secrets):
    clock = FakeClock()
    store = make_store(secrets, clock)
    store.seed(HOST, EXPIRED)
    seen: list[str] = []

    async def endpoint(refresh_token: str) -> TokenResponse:
        seen.append(refresh_token)
        return TokenResponse(f"access-{len(seen) + 1}", None, 3600)

    assert asyncio.run(store.access_token(HOST, endpoint)) == "access-2"
    clock.advance(3600)
    assert asyncio.run(store.access_token(HOST, endpoint)) == "access-3"
    assert seen == ["refresh-1", "refresh-1"]


def test_genuine_invalid_grant_kills_the_credential_once(secrets):
    clock = FakeClock()
    store = make_store(secrets, clock)
    store.seed(HOST, EXPIRED)
    calls: list[str] = []

    async def revoked(refresh_token: str) -> TokenResponse:
        calls.append(refresh_token)
        raise TokenRefused("invalid_grant", "Refresh token has been revoked")

    async def burst() -> list[BaseException | str]:
        return await asyncio.gather(
            *(store.access_token(HOST, revoked) for _ in range(20)), return_exceptions=True
        )

    results = asyncio.run(burst())
    assert all(isinstance(r, CredentialDead) for r in results)
    assert "invalid_grant: Refresh token has been revoked" in str(results[0])
    assert calls == ["refresh-1"]

    # Another process (a new store on the same file) does not spend the dead token again...
    other = make_store(secrets, clock)
    with pytest.raises(CredentialDead, match="revoked"):
        asyncio.run(other.access_token(HOST, revoked))
    assert calls == ["refresh-1"]
    # ...until the operator clears the failure, or logs in again.
    assert other.clear_failure(HOST) is True
    assert asyncio.run(other.access_token(HOST, FakeTokenEndpoint(delay=0))) == "access-2"


def test_invalid_grant_after_another_process_rotated_is_not_fatal(secrets):
    clock = FakeClock()
    slow = make_store(secrets, clock)
    fast = make_store(secrets, clock)
    slow.seed(HOST, EXPIRED)
    endpoint = FakeTokenEndpoint(delay=0)

    async def slow_endpoint(refresh_token: str) -> TokenResponse:
        clock.advance(60)  # the process stalls (suspended, swapping) past its 30 s lease
        # Meanwhile the other process finds the lease lapsed and rotates the token...
        assert await fast.access_token(HOST, endpoint) == "access-2"
        # ...so this refresh, with the same token, is refused.
        return await endpoint(refresh_token)

    assert asyncio.run(slow.access_token(HOST, slow_endpoint)) == "access-2"
    assert endpoint.calls == ["refresh-1", "refresh-1"]
    status = slow.status(HOST)
    assert status is not None and status.failed_reason is None and status.version == 2


def test_a_lost_compare_and_swap_keeps_the_stored_tokens(secrets):
    clock = FakeClock()
    store = make_store(secrets, clock)
    store.seed(HOST, EXPIRED)

    async def endpoint_that_races(refresh_token: str) -> TokenResponse:
        # Someone stores other tokens while this refresh is in flight (a new login, say).
        store.seed(HOST, OAuthTokens("access-login", "refresh-login", NOW + 3600))
        return TokenResponse("access-mine", "refresh-mine", 3600)

    assert asyncio.run(store.access_token(HOST, endpoint_that_races)) == "access-login"


def test_a_transient_failure_keeps_a_valid_token_and_never_disables(secrets, caplog):
    clock = FakeClock()
    store = make_store(secrets, clock, transient_backoff_s=600)
    refresh_token = "sk-ant-ort01-" + "r" * 40
    store.seed(HOST, OAuthTokens("access-1", refresh_token, NOW + 60))
    calls: list[str] = []

    async def down(refresh_token: str) -> TokenResponse:
        calls.append(refresh_token)
        # a careless HTTP client library might echo the request body
        raise ConnectionError(f"token endpoint unreachable (sent refresh_token={refresh_token})")

    async def scenario() -> str:
        token = await store.access_token(HOST, down)
        deadline = time.monotonic() + 10
        while "ConnectionError" not in caplog.text:  # the refresh in the background has failed
            assert time.monotonic() < deadline, "the background refresh never failed"
            await asyncio.sleep(0.01)
        return token

    assert asyncio.run(scenario()) == "access-1"
    assert asyncio.run(store.access_token(HOST, down)) == "access-1"  # backing off: no second attempt
    assert calls == [refresh_token]
    assert "ConnectionError" in caplog.text and refresh_token not in caplog.text

    clock.advance(120)  # expired, still backing off
    with pytest.raises(CredentialUnavailable) as raised:
        asyncio.run(store.access_token(HOST, down))
    assert raised.value.retry_after_s == pytest.approx(480)
    assert len(calls) == 1

    clock.advance(480)  # the backoff is over
    with pytest.raises(CredentialUnavailable, match="ConnectionError") as raised:
        asyncio.run(store.access_token(HOST, down))
    assert refresh_token not in str(raised.value) and len(calls) == 2
    status = store.status(HOST)
    assert status is not None and status.failed_reason is None and status.lease_until is None


def test_a_wall_clock_set_forward_does_not_cut_a_backoff_short(secrets):
    """The backoff after a failed refresh is this process's own interval, on the monotonic clock; the token's
    expiry is the provider's epoch time, on the wall clock."""
    clock = FakeClock()
    store = make_store(secrets, clock, transient_backoff_s=60)
    store.seed(HOST, OAuthTokens("access-1", "refresh-1", NOW - 10))
    calls: list[str] = []

    async def down(refresh_token: str) -> TokenResponse:
        calls.append(refresh_token)
        raise ConnectionError("token endpoint unreachable")

    with pytest.raises(CredentialUnavailable):
        asyncio.run(store.access_token(HOST, down))
    clock.set_wall(NOW + 86_400)  # a day later by the wall clock, no time at all by the monotonic one
    with pytest.raises(CredentialUnavailable) as raised:
        asyncio.run(store.access_token(HOST, down))
    assert raised.value.retry_after_s == pytest.approx(60) and calls == ["refresh-1"]
    clock.advance(60)
    with pytest.raises(CredentialUnavailable, match="ConnectionError"):
        asyncio.run(store.access_token(HOST, down))
    assert calls == ["refresh-1", "refresh-1"]


def test_an_expired_long_lived_token_is_dead(secrets):
    clock = FakeClock()
    store = make_store(secrets, clock)
    store.seed(HOST, OAuthTokens("sk-ant-oat01-long", None, NOW + 10))
    assert asyncio.run(store.access_token(HOST, FakeTokenEndpoint())) == "sk-ant-oat01-long"
    clock.advance(20)
    with pytest.raises(CredentialDead, match="no refresh token"):
        asyncio.run(store.access_token(HOST, FakeTokenEndpoint()))


def test_an_unseeded_credential_is_dead(secrets):
    with pytest.raises(CredentialDead, match="seed"):
        asyncio.run(make_store(secrets, FakeClock()).access_token(HOST, FakeTokenEndpoint()))


def test_two_processes_refresh_an_expired_token_exactly_once(secrets, tmp_path):
    log_path = tmp_path / "refreshes.log"
    OAuthStore(source(secrets)).seed(HOST, OAuthTokens("access-1", "refresh-1", time.time() - 10))

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    processes = [
        context.Process(target=_process_main, args=(secrets, str(log_path), barrier, results))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=20) for _ in processes]
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0

    assert outcomes == [["access-2"] * 25, ["access-2"] * 25]
    assert len(log_path.read_text().splitlines()) == 1


def test_a_refused_access_token_is_dropped_and_refreshed_once(secrets):
    clock = FakeClock()
    endpoint = FakeTokenEndpoint(delay=0)
    events: list[tuple[str, str, str]] = []
    store = OAuthStore(source(secrets), clock=clock, poll_s=0.01, on_event=lambda *e: events.append(e))
    store.seed(HOST, FRESH)
    assert asyncio.run(store.access_token(HOST, endpoint)) == "access-1"

    assert store.reject(HOST, "access-1", "401 OAuth token has been revoked") == "refreshing"
    # Every request that carried the refused token says so: still one refresh.
    assert store.reject(HOST, "access-1", "401 OAuth token has been revoked") == "refreshing"

    async def burst() -> list[str]:
        return await asyncio.gather(*(store.access_token(HOST, endpoint) for _ in range(20)))

    assert asyncio.run(burst()) == ["access-2"] * 20
    assert endpoint.calls == ["refresh-1"]
    assert store.reject(HOST, "access-1", "401 late answer") == "stale"  # the store has moved on
    assert store.needs_confirm(HOST)
    assert store.confirm(HOST, "access-2") is True
    assert not store.needs_confirm(HOST)
    assert store.confirm(HOST, "access-2") is False
    assert [event for _, event, _ in events] == ["token_rejected", "refreshed", "healed"]
    assert "after a refusal" in events[1][2]

    # Healed: a later refusal of the healthy token heals again rather than killing it.
    assert store.reject(HOST, "access-2", "401 revoked again") == "refreshing"


def test_a_replacement_refused_before_anything_accepted_it_is_dead(secrets):
    clock = FakeClock()
    endpoint = FakeTokenEndpoint(delay=0)
    store = make_store(secrets, clock)
    store.seed(HOST, FRESH)
    assert store.reject(HOST, "access-1", "401 invalid bearer token") == "refreshing"
    assert asyncio.run(store.access_token(HOST, endpoint)) == "access-2"
    assert store.reject(HOST, "access-2", "401 invalid bearer token") == "dead"
    other = make_store(secrets, clock)  # every process sees it dead, with the reason
    with pytest.raises(CredentialDead, match="obtained after an earlier refusal was refused too"):
        asyncio.run(other.access_token(HOST, endpoint))
    assert endpoint.calls == ["refresh-1"]


def test_a_refused_long_lived_token_cannot_heal(secrets):
    store = make_store(secrets, FakeClock())
    store.seed(HOST, OAuthTokens("long-lived-token"))
    assert store.reject(HOST, "long-lived-token", "401 invalid") == "dead"
    status = store.status(HOST)
    assert (
        status is not None and status.failed_reason is not None and "no refresh token" in status.failed_reason
    )


def test_refresh_now_refreshes_a_fresh_token_once_across_callers(secrets):
    clock = FakeClock()
    endpoint = FakeTokenEndpoint()
    events: list[tuple[str, str, str]] = []
    store = OAuthStore(source(secrets), clock=clock, poll_s=0.01, on_event=lambda *e: events.append(e))
    # Either may win the lease: both report to the same history.
    other = OAuthStore(source(secrets), clock=clock, poll_s=0.01, on_event=lambda *e: events.append(e))
    store.seed(HOST, FRESH)

    async def both() -> list[object]:
        return await asyncio.gather(store.refresh_now(HOST, endpoint), other.refresh_now(HOST, endpoint))

    statuses = asyncio.run(both())
    assert [s.version for s in statuses] == [2, 2]  # type: ignore[attr-defined]
    assert endpoint.calls == ["refresh-1"]
    assert asyncio.run(other.access_token(HOST, endpoint)) == "access-2"
    assert [event for _, event, _ in events] == ["refreshed"]
    assert "by hand" in events[-1][2]


def test_refresh_now_says_why_it_failed(secrets):
    store = make_store(secrets, FakeClock())
    store.seed(HOST, FRESH)

    async def down(refresh_token: str) -> TokenResponse:
        raise ConnectionError("token endpoint unreachable")

    with pytest.raises(CredentialUnavailable, match="unreachable"):
        asyncio.run(store.refresh_now(HOST, down))

    async def revoked(refresh_token: str) -> TokenResponse:
        raise TokenRefused("invalid_grant", "revoked")

    with pytest.raises(CredentialDead, match="invalid_grant"):
        asyncio.run(store.refresh_now(HOST, revoked))
    with pytest.raises(CredentialDead):  # and it does not spend the dead token again
        asyncio.run(store.refresh_now(HOST, FakeTokenEndpoint()))


def test_oauth_history_is_never_written_on_the_event_loop(secrets):
    """The history hook writes to the database, which may wait seconds for another process's lock: on the
    event loop that would stall every request. Refreshes (ahead of expiry, after a refusal, by hand),
    refusals and heals all report from a worker thread."""
    clock = FakeClock()
    endpoint = FakeTokenEndpoint(delay=0)
    on_loop: list[str] = []

    def record(key: str, event: str, detail: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # a worker thread: where a database write belongs
        on_loop.append(event)

    store = OAuthStore(source(secrets), clock=clock, poll_s=0.01, on_event=record)
    store.seed(HOST, EXPIRED)

    async def run() -> None:
        assert await store.access_token(HOST, endpoint) == "access-2"  # refreshed: expired
        assert await asyncio.to_thread(store.reject, HOST, "access-2", "401 revoked") == "refreshing"
        assert await store.access_token(HOST, endpoint) == "access-3"  # refreshed after a refusal
        assert await asyncio.to_thread(store.confirm, HOST, "access-3")
        await store.refresh_now(HOST, endpoint)

    asyncio.run(run())
    assert len(endpoint.calls) == 3
    assert on_loop == []


# -- PostgreSQL: proxies on many machines ----------------------------------------------------------------


def test_threads_and_processes_on_postgresql_refresh_an_expiring_token_exactly_once(postgres_url, tmp_path):
    """Four proxies as threads and three as processes, each with its own store and 25 callers, all finding
    the token expired at once: one refresh reaches the token endpoint, every caller gets the new token."""
    log_path = tmp_path / "refreshes.log"
    OAuthStore(source(postgres_url)).seed(HOST, OAuthTokens("access-1", "refresh-1", time.time() - 10))
    context = multiprocessing.get_context("spawn")
    threads, processes = 4, 3
    barrier = context.Barrier(threads + processes)
    results = context.Queue()
    args = (postgres_url, str(log_path), barrier, results)
    racers = [threading.Thread(target=_process_main, args=args) for _ in range(threads)]
    racers += [context.Process(target=_process_main, args=args) for _ in range(processes)]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=60) for _ in racers]
    for racer in racers:
        racer.join(timeout=20)
    assert [p.exitcode for p in racers if isinstance(p, multiprocessing.process.BaseProcess)] == [0] * 3

    assert outcomes == [["access-2"] * 25] * (threads + processes)
    assert len(log_path.read_text().splitlines()) == 1
    status = OAuthStore(source(postgres_url)).status(HOST)
    assert status is not None and status.version == 2 and status.lease_until is None  # one store, lease freed


def test_on_postgresql_exactly_one_compare_and_swap_lands_and_a_loser_never_overwrites(postgres_url):
    store = open_store(postgres_url)
    OAuthStore(store).seed(HOST, EXPIRED)
    racers = [OAuthStore(store) for _ in range(8)]
    barrier = threading.Barrier(len(racers))
    landed: list[str] = []

    def swap(number: int) -> None:
        barrier.wait()
        stored = racers[number]._store(HOST, 1, TokenResponse(f"access-{number}", f"refresh-{number}", 3600))
        if stored is not None:
            landed.append(stored.access_token)

    threads = [threading.Thread(target=swap, args=(n,)) for n in range(len(racers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    [winner] = landed
    late = racers[0]._store(HOST, 1, TokenResponse("access-late", "refresh-late", 3600))
    assert late is None
    with store.reading() as db:
        row = db.execute("select access_token, version from sluice_secrets.oauth_tokens").fetchone()
    assert row == (winner, 2)


def test_with_postgresql_away_a_proxy_uses_the_token_it_last_knew_and_refreshes_nothing(
    start_postgres, caplog
):
    server = start_postgres()
    store = open_store(server.create_database())
    clock = FakeClock()
    endpoint = FakeTokenEndpoint(delay=0)
    proxies = [OAuthStore(store, clock=clock, poll_s=0.01, recheck_s=30) for _ in range(3)]
    proxies[0].seed(HOST, FRESH)
    assert [asyncio.run(p.access_token(HOST, endpoint)) for p in proxies] == ["access-1"] * 3

    server.stop()
    clock.advance(3600 - 100)  # within the refresh skew, past the recheck: each proxy would read and refresh
    assert [asyncio.run(p.access_token(HOST, endpoint)) for p in proxies] == ["access-1"] * 3
    assert "the database of the OAuth tokens is unreachable" in caplog.text
    clock.advance(200)  # expired: nothing may refresh without the lease
    for proxy in proxies:
        with pytest.raises(CredentialUnavailable, match="refreshed once the database answers"):
            asyncio.run(proxy.access_token(HOST, endpoint))
    assert endpoint.calls == []
    assert server.password not in caplog.text

    server.start()
    clock.advance(60)  # past the backoff
    assert [asyncio.run(p.access_token(HOST, endpoint)) for p in proxies] == ["access-2"] * 3
    assert endpoint.calls == ["refresh-1"]
    assert "answers again" in caplog.text


def test_tokens_refreshed_as_postgresql_went_away_are_held_and_written_when_it_is_back(
    start_postgres, caplog
):
    server = start_postgres()
    store = open_store(server.create_database())
    clock = FakeClock()
    oauth = OAuthStore(store, clock=clock, poll_s=0.01)
    oauth.seed(HOST, EXPIRED)

    async def refresh_then_lose_the_database(refresh_token: str) -> TokenResponse:
        await asyncio.to_thread(server.stop)  # the refresh token is spent; the database goes before the store
        return TokenResponse("access-2", "refresh-2", 3600)

    assert asyncio.run(oauth.access_token(HOST, refresh_then_lose_the_database)) == "access-2"
    assert "holding it in memory" in caplog.text
    server.start()
    clock.advance(60)  # past the recheck: the held tokens are written, compare-and-swap on the old version
    assert asyncio.run(oauth.access_token(HOST, FakeTokenEndpoint())) == "access-2"
    other = OAuthStore(store, clock=clock)
    assert asyncio.run(other.access_token(HOST, FakeTokenEndpoint())) == "access-2"
    status = other.status(HOST)
    assert status is not None and status.version == 2


def test_a_postgresql_url_is_never_taken_for_a_secrets_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="open_store"):
        OAuthStore("postgresql://sluice@127.0.0.1:5432/sluice")
    assert list(tmp_path.iterdir()) == []  # no file made of the URL
