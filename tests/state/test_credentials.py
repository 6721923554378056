from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from rules.credential_files import OAuthTokens, TokenResponse, parse_oauth_credentials
from rules.secrets import describe_reference, fingerprint, scrub
from state import db as sluice_db
from state.oauth import CredentialDead, CredentialUnavailable, OAuthStore, TokenRefused
from state.pool import Choice, CredentialEntry, CredentialPool
from state.secrets_db import secrets_path_for

HOST = "api.anthropic.com"
NOW = 1_800_000_000.0
SECRETS = ["sk-ant-api03-" + "a" * 40, "sk-ant-api03-" + "b" * 40, "sk-ant-api03-" + "c" * 40]


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entries(secrets: list[str] = SECRETS) -> list[CredentialEntry]:
    return [
        CredentialEntry(describe_reference(f"keys[{i}]", f"env:ANTHROPIC_KEY_{i + 1}"), fingerprint(secret))
        for i, secret in enumerate(secrets)
    ]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sluice.db"


def make_pool(db_path: Path, clock: Clock, **kwargs: float) -> CredentialPool:
    pool = CredentialPool(sluice_db.connect(db_path), clock=clock, **kwargs)
    pool.sync_config(HOST, entries())
    return pool


def chosen(choice: Choice) -> str | None:
    return choice.credential.label if choice.credential else None


# -- labels and cooldowns -------------------------------------------------------------------------------


def test_labels_name_the_reference_never_a_literal():
    assert describe_reference("keys[0]", "env:ANTHROPIC_KEY_1") == "keys[0] env:ANTHROPIC_KEY_1"
    assert describe_reference("keys[1]", "file:~/keys/two") == "keys[1] file:~/keys/two"
    assert describe_reference("keys[2]", SECRETS[0]) == "keys[2] (inline)"
    assert fingerprint(SECRETS[0]).startswith("sha256:") and SECRETS[0] not in fingerprint(SECRETS[0])


def test_scrub_cuts_token_shaped_text():
    message = f"Incorrect API key provided: {SECRETS[0]}. See https://platform.openai.com/account/api-keys"
    cleaned = scrub(message)
    assert SECRETS[0] not in cleaned and "Incorrect API key provided: sk-ant…" in cleaned
    assert "platform.openai.com/account/api-keys" in cleaned
    assert len(scrub("x " * 500)) <= 300


def test_scrub_keeps_a_reason_on_one_printable_line():
    """Reasons reach the log, `sluice credentials` and clients' error messages: an upstream's words must not
    forge a log line or drive a terminal."""
    said = "Overloaded\nsluice: forged line\x1b[2J\x07 \u2028end"
    assert scrub(said) == "Overloaded sluice: forged line\\x1b[2J\\x07 end"


# -- the pool -------------------------------------------------------------------------------------------


def test_first_usable_credential_in_order_with_failover(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
    labels = [entry.label for entry in entries()]
    assert chosen(pool.choose(HOST)) == labels[0]
    assert chosen(pool.choose(HOST)) == labels[0]  # sticky: the prompt cache lives per key

    pool.report(
        HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "10"}, "Number of request tokens exceeded"
    )
    assert chosen(pool.choose(HOST)) == labels[1]
    pool.report(HOST, fingerprint(SECRETS[1]), 429, {"retry-after": "20"}, "Rate limited")
    assert chosen(pool.choose(HOST, routing="first")) == labels[2]

    clock.now += 10
    assert chosen(pool.choose(HOST, routing="first")) == labels[0]  # back to the first once it has rested


def test_an_overloaded_provider_cools_no_key(db_path):
    pool = make_pool(db_path, Clock())
    assert pool.report(HOST, fingerprint(SECRETS[0]), 529, {}, "Overloaded") is None
    assert pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "5"}, "Overloaded") is not None
    assert [s.state for s in pool.states()] == ["cooling", "active", "active"]
    assert pool.events()[0].event == "cooled"


def test_all_cooling_gives_the_soonest_retry(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
    for secret, seconds in zip(SECRETS, ["30", "5", "12"], strict=True):
        pool.report(HOST, fingerprint(secret), 429, {"retry-after": seconds})
    choice = pool.choose(HOST)
    assert choice.credential is None and choice.retry_after_s == pytest.approx(5)
    assert len(choice.reasons) == 3 and "cooling for 5s (429 rate limited)" in choice.reasons[1]


def test_401_disables_with_the_providers_reason(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
    for secret in SECRETS:
        pool.report(HOST, fingerprint(secret), 401, {}, "invalid x-api-key")
    choice = pool.choose(HOST)
    assert choice.credential is None and choice.retry_after_s is None
    assert choice.reasons[0] == "keys[0] env:ANTHROPIC_KEY_1: disabled (401 invalid x-api-key)"

    # A later 429 does not bring a disabled key back, and time does not either.
    assert pool.report(HOST, fingerprint(SECRETS[0]), 429, {}) is None
    clock.now += 86400
    assert pool.choose(HOST).credential is None
    assert [s.state for s in pool.states()] == ["disabled"] * 3


def test_only_a_terminal_403_disables_and_success_changes_nothing(db_path):
    pool = make_pool(db_path, Clock())
    assert pool.report(HOST, fingerprint(SECRETS[0]), 200, {}) is None
    assert pool.report(HOST, fingerprint(SECRETS[0]), 500, {"retry-after": "5"}) is None
    # A permission error may concern one model or feature: the key stays for the rest.
    assert pool.report(HOST, fingerprint(SECRETS[0]), 403, {}, "no permission for this resource") is None
    message = "OAuth authentication is currently not allowed for this organization."
    state = pool.report(HOST, fingerprint(SECRETS[0]), 403, {}, message)
    assert state is not None and state.state == "disabled" and state.reason == f"403 {message}"


def test_a_longer_cooldown_is_not_shortened(db_path):
    pool = make_pool(db_path, Clock())
    pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "100"})
    assert pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "5"}) is None
    assert pool.states()[0].cooling_until == NOW + 100


def test_state_survives_a_restart(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
    pool.report(HOST, fingerprint(SECRETS[0]), 401, {}, "invalid x-api-key")
    pool.report(HOST, fingerprint(SECRETS[1]), 429, {"retry-after": "60"})

    restarted = make_pool(db_path, clock)
    assert chosen(restarted.choose(HOST)) == "keys[2] env:ANTHROPIC_KEY_3"
    states = {s.label: s for s in restarted.states()}
    assert states["keys[0] env:ANTHROPIC_KEY_1"].reason == "401 invalid x-api-key"
    assert states["keys[1] env:ANTHROPIC_KEY_2"].state == "cooling"
    assert [s.position for s in restarted.states()] == [0, 1, 2]


def test_two_processes_see_each_others_changes_within_the_refresh_interval(db_path):
    clock = Clock()
    first = make_pool(db_path, clock, refresh_every=0.2)
    second = make_pool(db_path, clock, refresh_every=0.2)
    assert chosen(second.choose(HOST)) == "keys[0] env:ANTHROPIC_KEY_1"

    first.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "60"})
    assert chosen(first.choose(HOST)) == "keys[1] env:ANTHROPIC_KEY_2"  # the writer sees it at once
    time.sleep(0.25)
    assert chosen(second.choose(HOST)) == "keys[1] env:ANTHROPIC_KEY_2"

    second.reset(HOST, "keys[0] env:ANTHROPIC_KEY_1")
    time.sleep(0.25)
    assert chosen(first.choose(HOST)) == "keys[0] env:ANTHROPIC_KEY_1"


def test_a_new_secret_under_the_same_label_is_a_new_credential(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
    pool.report(HOST, fingerprint(SECRETS[0]), 401, {}, "invalid x-api-key")
    rotated = ["sk-ant-api03-" + "d" * 40, *SECRETS[1:]]
    pool.sync_config(HOST, entries(rotated))
    choice = pool.choose(HOST)
    assert choice.credential is not None and choice.credential.fingerprint == fingerprint(rotated[0])
    # the old secret's row stays, disabled and no longer configured
    old = next(s for s in pool.states() if s.fingerprint == fingerprint(SECRETS[0]))
    assert old.state == "disabled" and old.position is None


def test_reset_by_label_or_fingerprint(db_path):
    pool = make_pool(db_path, Clock())
    pool.report(HOST, fingerprint(SECRETS[0]), 401, {}, "invalid x-api-key")
    pool.report(HOST, fingerprint(SECRETS[1]), 429, {})
    assert pool.reset(HOST, "no such label") == []
    [reset] = pool.reset(HOST, "keys[0] env:ANTHROPIC_KEY_1")
    assert reset.state == "active" and reset.reason is None
    assert [s.label for s in pool.reset(HOST, fingerprint(SECRETS[1]))] == ["keys[1] env:ANTHROPIC_KEY_2"]
    assert [s.state for s in pool.states()] == ["active"] * 3


def test_the_same_secret_twice_is_a_config_error(db_path):
    pool = CredentialPool(sluice_db.connect(db_path))
    with pytest.raises(ValueError, match=r"keys\[0\] env:ANTHROPIC_KEY_1 and keys\[1\] env:ANTHROPIC_KEY_2"):
        pool.sync_config(HOST, entries([SECRETS[0], SECRETS[0]]))


def test_unknown_host_has_no_credentials(db_path):
    choice = make_pool(db_path, Clock()).choose("api.openai.com")
    assert choice == Choice(reasons=("no credentials configured for api.openai.com",))


def test_a_refused_write_is_still_honoured_by_this_process(db_path, caplog):
    make_pool(db_path, Clock())
    pool = CredentialPool(sluice_db.connect(db_path, busy_timeout_ms=50), clock=Clock())
    pool.sync_config(HOST, entries())
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("begin immediate")  # another process sits on the write lock
    try:
        state = pool.report(HOST, fingerprint(SECRETS[0]), 401, {}, "invalid x-api-key")
        assert state is not None and state.state == "disabled"
        assert chosen(pool.choose(HOST)) == "keys[1] env:ANTHROPIC_KEY_2"
        assert "only this process will honour it" in caplog.text
    finally:
        blocker.execute("rollback")
    assert [s.state for s in pool.states()] == ["active"] * 3  # the database never heard of it


def test_no_secret_reaches_the_main_database(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
    pool.report(HOST, fingerprint(SECRETS[0]), 401, {}, f"Incorrect API key provided: {SECRETS[0]}")
    pool.report(HOST, fingerprint(SECRETS[1]), 429, {"retry-after": "3"}, "rate limited")
    store = OAuthStore(secrets_path_for(db_path), clock=clock)
    store.seed(HOST, OAuthTokens("sk-ant-oat01-" + "x" * 40, "sk-ant-ort01-" + "y" * 40, NOW + 3600))

    main_bytes = b"".join(
        path.read_bytes() for path in db_path.parent.iterdir() if path.name.startswith("sluice.db")
    )
    for secret in [*SECRETS, "sk-ant-oat01-" + "x" * 40, "sk-ant-ort01-" + "y" * 40]:
        assert secret.encode() not in main_bytes
    assert fingerprint(SECRETS[0]).encode() in main_bytes


# -- OAuth credentials files ----------------------------------------------------------------------------


def test_parse_claude_code_credentials():
    text = json.dumps(
        {
            "claudeAiOauth": {
                "accessToken": "sk-ant-oat01-abc",
                "refreshToken": "sk-ant-ort01-def",
                "expiresAt": 1_800_000_000_000,
                "scopes": ["user:inference", "user:profile"],
                "subscriptionType": "max",
            }
        }
    )
    tokens = parse_oauth_credentials(text)
    assert tokens == OAuthTokens(
        "sk-ant-oat01-abc", "sk-ant-ort01-def", 1_800_000_000.0, ("user:inference", "user:profile")
    )
    assert "sk-ant" not in repr(tokens)


def test_parse_flat_and_long_lived_credentials():
    flat = parse_oauth_credentials('{"access_token": "at", "refresh_token": "rt", "expires_at": 1800000000}')
    assert (flat.access_token, flat.refresh_token, flat.expires_at) == ("at", "rt", 1_800_000_000.0)
    bare = parse_oauth_credentials("sk-ant-oat01-long-lived\n")
    assert (bare.access_token, bare.refresh_token, bare.expires_at) == ("sk-ant-oat01-long-lived", None, None)
    assert bare.identity == fingerprint("sk-ant-oat01-long-lived")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("{not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"claudeAiOauth": {"refreshToken": "sk-ant-ort01-secret"}}', "no claudeAiOauth.accessToken"),
        ('{"access_token": "sk-secret", "expires_at": "tomorrow"}', "expires_at must be a number"),
        ("two words", "neither JSON nor a single token"),
    ],
)
def test_bad_credentials_files_name_the_field_not_the_value(text, message):
    with pytest.raises(ValueError, match=message) as raised:
        parse_oauth_credentials(text)
    assert "secret" not in str(raised.value)


# -- the OAuth store ------------------------------------------------------------------------------------

EXPIRED = OAuthTokens("access-1", "refresh-1", NOW - 10)


class FakeTokenEndpoint:
    """Rotates like a real one: each refresh token works once."""

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


def make_store(tmp_path: Path, clock: Clock, **kwargs: float) -> OAuthStore:
    return OAuthStore(tmp_path / "sluice.secrets.db", clock=clock, poll_s=0.01, **kwargs)


def test_secrets_file_is_private_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        OAuthStore(tmp_path / "a.secrets.db")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.secrets.db").stat().st_mode) == 0o600

    loose = tmp_path / "b.secrets.db"
    loose.touch(mode=0o644)
    os.chmod(loose, 0o644)
    OAuthStore(loose).seed(HOST, EXPIRED)
    for path in tmp_path.glob("b.secrets.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert secrets_path_for(tmp_path / "sluice.db") == tmp_path / "sluice.secrets.db"


def test_seeding_takes_only_tokens_the_store_has_never_seen(tmp_path):
    clock = Clock()
    endpoint = FakeTokenEndpoint(delay=0)
    store = make_store(tmp_path, clock)
    assert store.seed(HOST, EXPIRED) is True
    assert asyncio.run(store.access_token(HOST, endpoint)) == "access-2"

    # A restart with the same (now spent) file keeps the rotated tokens.
    restarted = make_store(tmp_path, clock)
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


def test_a_new_login_seeded_by_another_process_is_picked_up(tmp_path):
    clock = Clock()
    serving = make_store(tmp_path, clock, recheck_s=0.05)
    serving.seed(HOST, OAuthTokens("access-1", "refresh-1", NOW + 3600))
    assert asyncio.run(serving.access_token(HOST, FakeTokenEndpoint())) == "access-1"

    make_store(tmp_path, clock).seed(HOST, OAuthTokens("access-new", "refresh-new", NOW + 3600))
    time.sleep(0.06)
    assert asyncio.run(serving.access_token(HOST, FakeTokenEndpoint())) == "access-new"


def test_fifty_concurrent_requests_on_an_expired_token_refresh_once(tmp_path):
    clock = Clock()
    endpoint = FakeTokenEndpoint()
    store = make_store(tmp_path, clock)
    store.seed(HOST, EXPIRED)

    async def burst() -> list[str]:
        return await asyncio.gather(*(store.access_token(HOST, endpoint) for _ in range(50)))

    assert asyncio.run(burst()) == ["access-2"] * 50
    assert endpoint.calls == ["refresh-1"]
    status = store.status(HOST)
    assert status is not None and status.expires_at == NOW + 3600 and status.version == 2


def test_refresh_ahead_of_expiry_serves_the_current_token_meanwhile(tmp_path):
    clock = Clock()
    endpoint = FakeTokenEndpoint()
    store = make_store(tmp_path, clock)
    store.seed(HOST, OAuthTokens("access-1", "refresh-1", NOW + 120))  # inside the 5 min skew

    async def scenario() -> tuple[list[str], str]:
        first = await asyncio.gather(*(store.access_token(HOST, endpoint) for _ in range(10)))
        await asyncio.sleep(0.2)
        return first, await store.access_token(HOST, endpoint)

    during, after = asyncio.run(scenario())
    assert during == ["access-1"] * 10 and after == "access-2"
    assert endpoint.calls == ["refresh-1"]


def test_a_response_without_refresh_token_keeps_the_old_one(tmp_path):
    clock = Clock()
    store = make_store(tmp_path, clock)
    store.seed(HOST, EXPIRED)
    seen: list[str] = []

    async def endpoint(refresh_token: str) -> TokenResponse:
        seen.append(refresh_token)
        return TokenResponse(f"access-{len(seen) + 1}", None, 3600)

    assert asyncio.run(store.access_token(HOST, endpoint)) == "access-2"
    clock.now += 3600
    assert asyncio.run(store.access_token(HOST, endpoint)) == "access-3"
    assert seen == ["refresh-1", "refresh-1"]


def test_genuine_invalid_grant_kills_the_credential_once(tmp_path):
    clock = Clock()
    store = make_store(tmp_path, clock)
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
    other = make_store(tmp_path, clock)
    with pytest.raises(CredentialDead, match="revoked"):
        asyncio.run(other.access_token(HOST, revoked))
    assert calls == ["refresh-1"]
    # ...until the operator clears the failure, or logs in again.
    assert other.clear_failure(HOST) is True
    assert asyncio.run(other.access_token(HOST, FakeTokenEndpoint(delay=0))) == "access-2"


def test_invalid_grant_after_another_process_rotated_is_not_fatal(tmp_path):
    clock = Clock()
    slow = make_store(tmp_path, clock)
    fast = make_store(tmp_path, clock)
    slow.seed(HOST, EXPIRED)
    endpoint = FakeTokenEndpoint(delay=0)

    async def slow_endpoint(refresh_token: str) -> TokenResponse:
        clock.now += 60  # the process stalls (suspended, swapping) past its 30 s lease
        # Meanwhile the other process finds the lease lapsed and rotates the token...
        assert await fast.access_token(HOST, endpoint) == "access-2"
        # ...so this refresh, with the same token, is refused.
        return await endpoint(refresh_token)

    assert asyncio.run(slow.access_token(HOST, slow_endpoint)) == "access-2"
    assert endpoint.calls == ["refresh-1", "refresh-1"]
    status = slow.status(HOST)
    assert status is not None and status.failed_reason is None and status.version == 2


def test_a_lost_compare_and_swap_keeps_the_stored_tokens(tmp_path):
    clock = Clock()
    store = make_store(tmp_path, clock)
    store.seed(HOST, EXPIRED)

    async def endpoint_that_races(refresh_token: str) -> TokenResponse:
        # Someone stores other tokens while this refresh is in flight (a new login, say).
        store.seed(HOST, OAuthTokens("access-login", "refresh-login", NOW + 3600))
        return TokenResponse("access-mine", "refresh-mine", 3600)

    assert asyncio.run(store.access_token(HOST, endpoint_that_races)) == "access-login"


def test_a_transient_failure_keeps_a_valid_token_and_never_disables(tmp_path, caplog):
    clock = Clock()
    store = make_store(tmp_path, clock, transient_backoff_s=60)
    refresh_token = "sk-ant-ort01-" + "r" * 40
    store.seed(HOST, OAuthTokens("access-1", refresh_token, NOW + 60))
    calls: list[str] = []

    async def down(refresh_token: str) -> TokenResponse:
        calls.append(refresh_token)
        # a careless HTTP client library might echo the request body
        raise ConnectionError(f"token endpoint unreachable (sent refresh_token={refresh_token})")

    async def scenario() -> str:
        token = await store.access_token(HOST, down)
        await asyncio.sleep(0.05)  # let the background refresh fail
        return token

    assert asyncio.run(scenario()) == "access-1"
    assert asyncio.run(store.access_token(HOST, down)) == "access-1"  # backing off: no second attempt
    assert calls == [refresh_token]
    assert "ConnectionError" in caplog.text and refresh_token not in caplog.text

    clock.now += 120  # expired, still backing off
    with pytest.raises(CredentialUnavailable) as raised:
        asyncio.run(store.access_token(HOST, down))
    assert raised.value.retry_after_s > 0

    clock.now += 1  # backoff is measured on the monotonic clock; expire it
    store._backoff_until.clear()
    with pytest.raises(CredentialUnavailable, match="ConnectionError") as raised:
        asyncio.run(store.access_token(HOST, down))
    assert refresh_token not in str(raised.value) and len(calls) == 2
    status = store.status(HOST)
    assert status is not None and status.failed_reason is None and status.lease_until is None


def test_an_expired_long_lived_token_is_dead(tmp_path):
    clock = Clock()
    store = make_store(tmp_path, clock)
    store.seed(HOST, OAuthTokens("sk-ant-oat01-long", None, NOW + 10))
    assert asyncio.run(store.access_token(HOST, FakeTokenEndpoint())) == "sk-ant-oat01-long"
    clock.now += 20
    with pytest.raises(CredentialDead, match="no refresh token"):
        asyncio.run(store.access_token(HOST, FakeTokenEndpoint()))


def test_an_unseeded_credential_is_dead(tmp_path):
    with pytest.raises(CredentialDead, match="seed"):
        asyncio.run(make_store(tmp_path, Clock()).access_token(HOST, FakeTokenEndpoint()))


# -- two real processes ---------------------------------------------------------------------------------


async def _counting_refresh(refresh_token: str, log_path: str) -> TokenResponse:
    with open(log_path, "a", encoding="utf-8") as log:  # O_APPEND: one short write per line is atomic
        log.write(f"{os.getpid()} {refresh_token}\n")
    await asyncio.sleep(0.3)
    return TokenResponse("access-2", "refresh-2", 3600)


def _process_main(secrets_path, log_path, barrier, results):
    store = OAuthStore(secrets_path, poll_s=0.02)

    async def refresh(refresh_token: str) -> TokenResponse:
        return await _counting_refresh(refresh_token, log_path)

    async def waiters() -> list[str]:
        outcomes = await asyncio.gather(
            *(store.access_token(HOST, refresh) for _ in range(25)), return_exceptions=True
        )
        return [o if isinstance(o, str) else f"{type(o).__name__}: {o}" for o in outcomes]

    barrier.wait()
    results.put(asyncio.run(waiters()))


def test_two_processes_refresh_an_expired_token_exactly_once(tmp_path):
    secrets_path = tmp_path / "sluice.secrets.db"
    log_path = tmp_path / "refreshes.log"
    OAuthStore(secrets_path).seed(HOST, OAuthTokens("access-1", "refresh-1", time.time() - 10))

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    processes = [
        context.Process(target=_process_main, args=(str(secrets_path), str(log_path), barrier, results))
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


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sk-ant-oat01-abc\x07def", "the OAuth token cannot be used: it contains a control character"),
        (
            '{"claudeAiOauth": {"accessToken": "sk-ant-oat01-a\\r\\nX-Evil: 1", "refreshToken": "r"}}',
            "claudeAiOauth.accessToken cannot be used: it contains a line break",
        ),
        (
            '{"access_token": "a", "refresh_token": "sk-ant-ort01-\\nGET / HTTP/1.1"}',
            "refresh_token cannot be used: it contains a line break",
        ),
    ],
)
def test_oauth_tokens_that_would_break_a_header_are_refused_without_quoting_them(
    text: str, reason: str
) -> None:
    with pytest.raises(ValueError) as e:
        parse_oauth_credentials(text)
    assert reason in str(e.value)
    assert "Evil" not in str(e.value) and "GET" not in str(e.value)


# -- routing: conversations keep their credential; new ones go where there is room -------------------------


def test_a_conversation_stays_on_its_key_after_an_earlier_key_recovers(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
    labels = [entry.label for entry in entries()]
    pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "10"}, "Rate limited")
    choice = pool.choose(HOST, "conversation-a")
    assert chosen(choice) == labels[1] and choice.pin and choice.moved_from is None
    assert choice.credential is not None
    pool.pin(HOST, "conversation-a", choice.credential)

    clock.now += 11  # keys[0] has rested
    again = pool.choose(HOST, "conversation-a")
    assert chosen(again) == labels[1] and not again.pin  # its prompt cache is on keys[1]
    assert chosen(pool.choose(HOST, "conversation-a", routing="first")) == labels[0]
    assert chosen(pool.choose(HOST, "conversation-b")) == labels[0]


def test_a_conversation_moves_only_when_its_key_cools_and_the_move_is_recorded(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
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


def test_new_conversations_go_to_the_key_with_the_most_headroom(db_path):
    pool = make_pool(db_path, Clock())
    labels = [entry.label for entry in entries()]
    pool.record_limits(HOST, fingerprint(SECRETS[0]), "allowed", 0.2)
    pool.record_limits(HOST, fingerprint(SECRETS[1]), "allowed", 0.7)
    pool.record_limits(HOST, fingerprint(SECRETS[2]), "allowed", 0.5)
    assert chosen(pool.choose(HOST, "new")) == labels[1]
    assert chosen(pool.choose(HOST, "new", routing="first")) == labels[0]


def test_a_key_that_has_not_reported_counts_as_having_all_its_room(db_path):
    pool = make_pool(db_path, Clock())
    pool.record_limits(HOST, fingerprint(SECRETS[0]), None, 0.99)
    assert chosen(pool.choose(HOST, "new")) == entries()[1].label


def test_which_key_a_conversation_is_on_is_shared_and_forgotten_after_an_hour(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
    other = make_pool(db_path, clock)
    pool.pin(HOST, "conversation-a", entries()[2])
    assert chosen(other.choose(HOST, "conversation-a")) == entries()[2].label
    clock.now += 3601
    assert chosen(make_pool(db_path, clock).choose(HOST, "conversation-a")) == entries()[0].label


def test_conversations_remembered_in_memory_are_bounded(db_path):
    pool = CredentialPool(sluice_db.connect(db_path), clock=Clock(), max_conversations=3)
    pool.sync_config(HOST, entries())
    for number in range(10):
        pool.pin(HOST, f"conversation-{number}", entries()[1])
    assert len(pool._pinned) == 3
    assert chosen(pool.choose(HOST, "conversation-0")) == entries()[1].label  # read back from the database


def test_choosing_never_waits_for_a_write_another_process_holds_up(db_path):
    """`choose` runs on the event loop. A write of this process (a conversation's pin, new limits) that waits
    for another process's write lock must not make it wait too: every request would stall behind it."""
    clock = Clock()
    pool = CredentialPool(sluice_db.connect(db_path, busy_timeout_ms=5_000), clock=clock, refresh_every=0)
    pool.sync_config(HOST, entries())
    pool.pin(HOST, "conversation-old", entries()[2])
    elsewhere = sqlite3.connect(db_path, isolation_level=None)
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
    assert chosen(make_pool(db_path, clock).choose(HOST, "conversation-new")) == entries()[1].label


def test_limits_are_written_only_when_they_change(db_path):
    pool = make_pool(db_path, Clock())
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


def test_a_good_answer_after_a_cooldown_records_the_recovery(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
    fp = fingerprint(SECRETS[0])
    pool.report(HOST, fp, 429, {"retry-after": "10"}, "Rate limited")
    assert pool.needs_recovery(HOST, fp)
    assert pool.recover(HOST, fp) is None  # not rested yet
    clock.now += 10
    state = pool.recover(HOST, fp)
    assert state is not None and state.state == "active"
    assert not pool.needs_recovery(HOST, fp)
    assert [e.event for e in pool.events()] == ["recovered", "cooled"]


def test_the_history_says_what_happened_and_why_never_a_secret(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
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
    with sqlite3.connect(db_path) as conn:
        dump = "\n".join(conn.iterdump())
    assert not any(secret in dump for secret in SECRETS)


# -- the OAuth store heals a refused token ---------------------------------------------------------------

FRESH = OAuthTokens("access-1", "refresh-1", NOW + 3600)


def test_a_refused_access_token_is_dropped_and_refreshed_once(tmp_path):
    clock = Clock()
    endpoint = FakeTokenEndpoint(delay=0)
    events: list[tuple[str, str, str]] = []
    store = OAuthStore(
        tmp_path / "sluice.secrets.db", clock=clock, poll_s=0.01, on_event=lambda *e: events.append(e)
    )
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


def test_a_replacement_refused_before_anything_accepted_it_is_dead(tmp_path):
    clock = Clock()
    endpoint = FakeTokenEndpoint(delay=0)
    store = make_store(tmp_path, clock)
    store.seed(HOST, FRESH)
    assert store.reject(HOST, "access-1", "401 invalid bearer token") == "refreshing"
    assert asyncio.run(store.access_token(HOST, endpoint)) == "access-2"
    assert store.reject(HOST, "access-2", "401 invalid bearer token") == "dead"
    other = make_store(tmp_path, clock)  # every process sees it dead, with the reason
    with pytest.raises(CredentialDead, match="obtained after an earlier refusal was refused too"):
        asyncio.run(other.access_token(HOST, endpoint))
    assert endpoint.calls == ["refresh-1"]


def test_a_refused_long_lived_token_cannot_heal(tmp_path):
    store = make_store(tmp_path, Clock())
    store.seed(HOST, OAuthTokens("long-lived-token"))
    assert store.reject(HOST, "long-lived-token", "401 invalid") == "dead"
    status = store.status(HOST)
    assert (
        status is not None and status.failed_reason is not None and "no refresh token" in status.failed_reason
    )


def test_refresh_now_refreshes_a_fresh_token_once_across_callers(tmp_path):
    clock = Clock()
    endpoint = FakeTokenEndpoint()
    events: list[tuple[str, str, str]] = []
    store = OAuthStore(
        tmp_path / "sluice.secrets.db", clock=clock, poll_s=0.01, on_event=lambda *e: events.append(e)
    )
    # Either may win the lease: both report to the same history.
    other = OAuthStore(
        tmp_path / "sluice.secrets.db", clock=clock, poll_s=0.01, on_event=lambda *e: events.append(e)
    )
    store.seed(HOST, FRESH)

    async def both() -> list[object]:
        return await asyncio.gather(store.refresh_now(HOST, endpoint), other.refresh_now(HOST, endpoint))

    statuses = asyncio.run(both())
    assert [s.version for s in statuses] == [2, 2]  # type: ignore[attr-defined]
    assert endpoint.calls == ["refresh-1"]
    assert asyncio.run(other.access_token(HOST, endpoint)) == "access-2"
    assert [event for _, event, _ in events] == ["refreshed"]
    assert "by hand" in events[-1][2]


def test_refresh_now_says_why_it_failed(tmp_path):
    store = make_store(tmp_path, Clock())
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


def test_a_burst_of_new_conversations_spreads_over_the_keys(db_path):
    pool = make_pool(db_path, Clock())
    chosen_keys = [chosen(pool.choose(HOST, f"conversation-{n}")) for n in range(6)]
    assert sorted(chosen_keys) == sorted([e.label for e in entries()] * 2)


def test_conversations_moved_off_a_resting_key_spread_over_the_others(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
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


def test_idle_conversations_stop_counting_against_their_key(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
    for n in range(3):
        pool.choose(HOST, f"old-{n}")
    clock.now += 3601
    assert chosen(pool.choose(HOST, "new")) == entries()[0].label
    assert pool._conversations == {(HOST, fingerprint(SECRETS[0])): 1}


def test_oauth_history_is_never_written_on_the_event_loop(tmp_path):
    """The history hook writes to the database, which may wait seconds for another process's lock: on the
    event loop that would stall every request. Refreshes (ahead of expiry, after a refusal, by hand),
    refusals and heals all report from a worker thread."""
    clock = Clock()
    endpoint = FakeTokenEndpoint(delay=0)
    on_loop: list[str] = []

    def record(key: str, event: str, detail: str) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # a worker thread: where a database write belongs
        on_loop.append(event)

    store = OAuthStore(tmp_path / "sluice.secrets.db", clock=clock, poll_s=0.01, on_event=record)
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


def test_a_rest_forgets_the_room_a_key_reported_so_it_is_not_shunned_once_usable(db_path):
    clock = Clock()
    pool = make_pool(db_path, clock)
    for secret, room in zip(SECRETS, (0.0, 0.5, 0.5), strict=True):
        pool.record_limits(HOST, fingerprint(secret), "allowed", room)
    pool.report(HOST, fingerprint(SECRETS[0]), 429, {"retry-after": "5"}, "Rate limited")
    clock.now += 5
    assert chosen(pool.choose(HOST, "new")) == entries()[0].label  # rested: its limit has reset
    other = make_pool(db_path, clock)  # and every process sees it so
    assert chosen(other.choose(HOST, "another")) == entries()[0].label


def test_limits_news_reads_the_headers_and_says_only_what_is_new(db_path):
    pool = make_pool(db_path, Clock())
    fp = fingerprint(SECRETS[0])
    headers = {
        "anthropic-ratelimit-unified-status": "allowed",
        "anthropic-ratelimit-unified-5h-utilization": "0.3",
    }
    assert pool.limits_news(HOST, fp, headers) == ("allowed", pytest.approx(0.7))
    pool.record_limits(HOST, fp, "allowed", 0.7)
    assert pool.limits_news(HOST, fp, headers) is None
    assert pool.limits_news(HOST, fp, {}) is None
