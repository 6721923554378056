"""The key pool reads the provider's answers (issue #14), end to end: a real mitmdump, real clients, the fake.

Each class of answer moves the pool its own way, and every change lands in `credential_events`: a revoked
OAuth token heals with one refresh, an overloaded provider cools no key, a spent subscription window rests the
key until it resets, a terminal refusal disables it with the provider's words, and a conversation stays on the
key that holds its prompt cache.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import REPO_ROOT, SITECUSTOMIZE_DIR, Proxy, anthropic_client, clean_env, curl
from tests.e2e.test_credentials import (
    ALICE_KEY,
    ANT_KEY_1,
    ANT_KEY_2,
    ENV,
    LABEL_1,
    LABEL_2,
    MESSAGE,
    NEW_ACCESS,
    NEW_REFRESH,
    OAUTH_TOKENS,
    OLD_ACCESS,
    OLD_REFRESH,
    POOL_CONFIG,
    REAL_KEYS,
    api_requests,
    assert_no_secret,
    credential_states,
    oauth_config,
    post_message,
)
from tests.fake_provider import DEFAULT_TEXT, FakeProvider, Usage

pytestmark = pytest.mark.e2e

ANSWERS = REPO_ROOT / "tests" / "fixtures" / "provider_answers"


def events(proxy: Proxy, *, at_least: int = 0, kind: str | None = None, timeout: float = 10.0) -> list[dict]:
    """`credential_events`, oldest first, once at least `at_least` rows (of `kind`) are there: some are
    written off the request path, after the answer has left."""
    assert proxy.db_path is not None
    deadline = time.monotonic() + timeout
    while True:
        conn = sqlite3.connect(f"{proxy.db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            rows = [dict(row) for row in conn.execute("select * from credential_events order by id")]
        finally:
            conn.close()
        chosen = [row for row in rows if kind is None or row["event"] == kind]
        if len(chosen) >= at_least or time.monotonic() > deadline:
            return chosen


def history_of(proxy: Proxy, at_least: int = 0) -> list[str]:
    """The credential's own events, oldest first (subscription status changes left out)."""
    rows = events(proxy, at_least=at_least)
    return [row["event"] for row in rows if row["event"] != "quota"]


def write_fresh_credentials(path: Path) -> Path:
    """A Claude Code `.credentials.json` whose access token is good for an hour."""
    expires_ms = int((time.time() + 3600) * 1000)
    claude = {"accessToken": OLD_ACCESS, "refreshToken": OLD_REFRESH, "expiresAt": expires_ms}
    path.write_text(json.dumps({"claudeAiOauth": claude}))
    return path


def statuses_seen(proxy: Proxy, max_retries: int) -> tuple[list[int], Any]:
    """One Messages call with the official SDK and its own retries; the statuses its retries saw."""
    seen: list[int] = []
    hooks = {"response": [lambda response: seen.append(response.status_code)]}
    with anthropic_client(
        proxy, ALICE_KEY, max_retries=max_retries, httpx_kwargs={"event_hooks": hooks}
    ) as c:
        try:
            return seen, c.messages.create(**MESSAGE)
        except anthropic.APIStatusError as e:
            return seen, e


# -- OAuth heals ----------------------------------------------------------------------------------------


def test_a_token_revoked_mid_run_heals_with_one_refresh_and_is_never_disabled(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    credentials = write_fresh_credentials(tmp_path / "credentials.json")
    proxy = start_proxy(config_toml=oauth_config(credentials), env=ENV)
    fake.accepted_credentials = {OLD_ACCESS}
    assert statuses_seen(proxy, 0)[0] == [200]

    # The provider revokes the access token (a new login elsewhere, a server-side revoke).
    fake.accepted_credentials = {NEW_ACCESS}
    fake.grant(OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)
    seen, message = statuses_seen(proxy, 2)

    assert seen == [429, 200]  # sluice's retryable answer, then the SDK's own retry with the new token
    assert message.content[0].text == DEFAULT_TEXT
    assert len(fake.token_requests) == 1
    assert [r.header("authorization") for r in api_requests(fake)] == [
        f"Bearer {OLD_ACCESS}",
        f"Bearer {OLD_ACCESS}",
        f"Bearer {NEW_ACCESS}",
    ]
    [state] = credential_states(proxy.db_path).values()
    assert state["state"] == "active"
    history = [row["event"] for row in events(proxy, at_least=1, kind="healed")]
    assert history == ["healed"]
    assert history_of(proxy) == ["token_rejected", "refreshed", "healed"]
    assert_no_secret(json.dumps(events(proxy)) + proxy.log_text(), REAL_KEYS + OAUTH_TOKENS)


def test_a_refreshed_token_that_is_refused_too_disables_the_credential(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    credentials = write_fresh_credentials(tmp_path / "credentials.json")
    proxy = start_proxy(config_toml=oauth_config(credentials), env=ENV)
    fake.accepted_credentials = {"a-token-nobody-holds"}
    fake.grant(OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)

    seen, error = statuses_seen(proxy, 3)

    assert seen == [429, 401]  # healing tried once; then the provider's own answer, nothing left to try
    assert isinstance(error, anthropic.AuthenticationError)
    assert len(fake.token_requests) == 1
    [state] = credential_states(proxy.db_path).values()
    assert state["state"] == "disabled"
    assert "obtained after an earlier refusal was refused too" in state["reason"]
    assert history_of(proxy, at_least=3) == ["token_rejected", "refreshed", "disabled"]


# -- each class of answer, replayed from the recorded shapes --------------------------------------------

REPLAYED = [
    ("anthropic_429_rate_limit", "cooling", "cooled"),
    ("anthropic_429_subscription_window", "cooling", "window_exhausted"),
    ("anthropic_429_extra_usage_no_headers", "cooling", "window_exhausted"),
    ("anthropic_400_organization_disabled", "disabled", "disabled"),
    ("anthropic_400_credit_balance", "disabled", "disabled"),
    ("anthropic_401_invalid_key", "disabled", "disabled"),
    ("anthropic_403_permission", "active", None),
    ("anthropic_529_overloaded", "active", None),
    ("anthropic_429_overloaded_error", "active", None),
]


@pytest.mark.parametrize(("name", "state", "event"), REPLAYED)
def test_each_class_of_answer_moves_the_pool_its_own_way(
    fake: FakeProvider, start_proxy: ProxyFactory, name: str, state: str, event: str | None
) -> None:
    answer = json.loads((ANSWERS / f"{name}.json").read_text())
    proxy = start_proxy(config_toml=POOL_CONFIG, env=ENV)
    headers = list(answer["headers"].items())
    if answer["expect"]["action"] == "window" and "anthropic-ratelimit-unified-reset" in answer["headers"]:
        reset = str(int(time.time()) + 7200)  # the recorded reset lies in the recording's own time
        headers = [(k, reset if k.endswith("-reset") and "7d" not in k else v) for k, v in headers]
    fake.next(status=answer["status"], body=answer["body"], headers=headers)

    result = post_message(proxy, f"x-api-key: {ALICE_KEY}")

    states = credential_states(proxy.db_path)
    assert states[LABEL_1]["state"] == state
    assert states[LABEL_2]["state"] == "active"
    if state == "active":
        # Nothing to say about the key: the client gets the provider's own answer.
        assert result.status == answer["status"]
        assert json.loads(result.body) == answer["body"]
    else:
        # Our credential's trouble, not the client's: retry now, onto the other key.
        assert (result.status, result.header("retry-after"), result.header("x-should-retry")) == (
            429,
            "1",
            "true",
        )
        [row] = events(proxy, at_least=1, kind=event)
        assert row["label"] == LABEL_1
        assert answer["body"]["error"]["message"].split(".")[0][:40] in row["detail"]
        assert post_message(proxy, f"x-api-key: {ALICE_KEY}").status == 200
        assert [r.header("x-api-key") for r in fake.requests] == [ANT_KEY_1, ANT_KEY_2]
    if name == "anthropic_429_subscription_window":
        until = states[LABEL_1]["cooling_until"]
        assert until == pytest.approx(time.time() + 7200, abs=30)  # until the window resets, not 60 s
        assert "five_hour window exhausted until" in states[LABEL_1]["reason"]


def test_a_529_storm_leaves_every_key_active_and_sluice_answers_for_the_provider(
    fake: FakeProvider, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(config_toml=POOL_CONFIG, env=ENV)
    for _ in range(3):
        fake.next(status=529, headers=[("retry-after", "1")])
    key = f"x-api-key: {ALICE_KEY}"
    assert [post_message(proxy, key).status for _ in range(3)] == [529, 529, 529]
    assert len(fake.requests) == 3

    answered = post_message(proxy, key)  # the breaker is open: sluice answers, the provider is spared

    assert len(fake.requests) == 3
    assert answered.status == 529
    assert int(answered.header("retry-after") or 0) >= 1
    assert answered.header("x-should-retry") == "true"
    assert json.loads(answered.body)["error"]["type"] == "overloaded_error"
    states = credential_states(proxy.db_path)
    assert {states[LABEL_1]["state"], states[LABEL_2]["state"]} == {"active"}
    [opened] = events(proxy, at_least=1, kind="overloaded")
    assert opened["fingerprint"] is None and "answering clients for 2s" in opened["detail"]

    # Half-open once its time is up: the next call goes upstream, and a good answer closes it.
    deadline = time.monotonic() + 15
    while (result := post_message(proxy, key)).status != 200:
        assert result.status == 529 and time.monotonic() < deadline
        time.sleep(0.2)
    assert len(fake.requests) == 4
    assert events(proxy, at_least=1, kind="overload_over")
    assert {s["state"] for s in credential_states(proxy.db_path).values()} == {"active"}


# -- routing: a conversation keeps its key ----------------------------------------------------------------

CACHED_TURN: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 32,
    "system": [{"type": "text", "text": "You are terse." * 200, "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": "hi"}],
}


def turn(proxy: Proxy, session: str) -> int:
    result = curl(
        proxy,
        "https://api.anthropic.com/v1/messages",
        "-H",
        f"x-api-key: {ALICE_KEY}",
        "-H",
        f"x-claude-code-session-id: {session}",
        "--json",
        json.dumps(CACHED_TURN),
    )
    return result.status


def wait_until_rested(proxy: Proxy, label: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (credential_states(proxy.db_path)[label]["cooling_until"] or 0) > time.time():
        assert time.monotonic() < deadline, f"{label} still cooling"
        time.sleep(0.1)


@pytest.mark.parametrize("routing", ["affinity", "first"])
def test_a_conversation_stays_on_the_key_that_holds_its_cache(
    fake: FakeProvider, start_proxy: ProxyFactory, routing: str
) -> None:
    config = POOL_CONFIG.replace('provider = "anthropic"', f'provider = "anthropic"\nrouting = "{routing}"')
    proxy = start_proxy(config_toml=config, env=ENV)
    fake.next(usage=Usage(cache_write_5m_tokens=1200))  # turn 1 writes the prompt cache on key 1
    assert turn(proxy, "session-a") == 200
    fake.next(status=429, headers=[("retry-after", "1")])
    assert turn(proxy, "session-a") == 429  # key 1 rests a second
    fake.next(usage=Usage(cache_write_5m_tokens=1200))
    assert turn(proxy, "session-a") == 200  # the client's retry: key 2, whose cache starts over
    wait_until_rested(proxy, LABEL_1)

    assert turn(proxy, "session-a") == 200

    keys = [r.header("x-api-key") for r in fake.requests]
    if routing == "affinity":
        assert keys == [ANT_KEY_1, ANT_KEY_1, ANT_KEY_2, ANT_KEY_2]  # stays where its cache is
        [moved] = events(proxy, at_least=1, kind="conversation_moved")
        assert LABEL_1 in moved["detail"] and "cooling" in moved["detail"] and moved["label"] == LABEL_2
    else:
        assert keys == [ANT_KEY_1, ANT_KEY_1, ANT_KEY_2, ANT_KEY_1]  # back to the first, cache lost again
    moved = proxy.wait_for_rows(4)[2]
    assert moved["credential"] == LABEL_2 and moved["cache_status"] == "miss"
    assert f"credential switched ({LABEL_1} → {LABEL_2})" in moved["cache_note"]


# -- by hand --------------------------------------------------------------------------------------------


def test_sluice_credentials_refresh_forces_one_refresh_the_proxy_then_uses(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    credentials = write_fresh_credentials(tmp_path / "credentials.json")
    proxy = start_proxy(config_toml=oauth_config(credentials), env=ENV)
    fake.accepted_credentials = {OLD_ACCESS, NEW_ACCESS}
    assert post_message(proxy, f"x-api-key: {ALICE_KEY}").status == 200
    [state] = credential_states(proxy.db_path).values()
    fake.grant(OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)

    command = [sys.executable, "-c", "from state.cli import main; raise SystemExit(main())"]
    args = ["credentials", "--db", str(proxy.db_path), "--config", str(proxy.workdir / "sluice.toml")]
    env = clean_env(
        {
            "PYTHONPATH": f"{SITECUSTOMIZE_DIR}:{REPO_ROOT}",
            "SLUICE_TEST_HOSTS": fake.hosts_env(),
            "SSL_CERT_FILE": str(fake.ca_pem),
            **ENV,
        }
    )
    done = subprocess.run(
        [*command, *args, "--refresh", "api.anthropic.com", state["label"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "refreshed; the new access token is good until" in done.stdout
    assert len(fake.token_requests) == 1
    # The proxy re-reads the store (within its recheck interval) or, at the latest, is told by a refusal.
    fake.accepted_credentials = {NEW_ACCESS}
    deadline = time.monotonic() + 45
    while post_message(proxy, f"x-api-key: {ALICE_KEY}").status != 200:
        assert time.monotonic() < deadline
    assert api_requests(fake)[-1].header("authorization") == f"Bearer {NEW_ACCESS}"
    assert len(fake.token_requests) == 1  # the proxy did not refresh again

    listed = subprocess.run(
        [*command, *args, "--events", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    kinds = [row["event"] for row in json.loads(listed.stdout)]
    assert "refreshed" in kinds
    assert_no_secret(listed.stdout + done.stdout + done.stderr, REAL_KEYS + OAUTH_TOKENS)
