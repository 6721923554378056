"""OAuth and the key pool across proxies on one PostgreSQL database: two real mitmdumps, the real anthropic
SDK, the fake provider (its token endpoint included) and a real PostgreSQL server the suite starts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import Proxy, anthropic_client
from tests.e2e.test_credentials import (
    ALICE_KEY,
    ENV,
    MESSAGE,
    NEW_ACCESS,
    NEW_REFRESH,
    OAUTH_TOKENS,
    OLD_ACCESS,
    OLD_REFRESH,
    api_requests,
    assert_no_secret,
    oauth_config,
)
from tests.e2e.test_postgres_fleet import _on, _wait_for_rows
from tests.fake_provider import DEFAULT_TEXT, FakeProvider
from tests.postgres import PostgresServer

pytestmark = pytest.mark.e2e

REFRESH_SKEW_S = 300  # the OAuth store refreshes this long before expiry (state/oauth.py)
DEADLINE_S = 60.0


def write_credentials_due_in(path: Path, seconds: float) -> Path:
    """A Claude Code `.credentials.json` whose access token becomes due for refresh `seconds` from now."""
    expires_ms = int((time.time() + REFRESH_SKEW_S + seconds) * 1000)
    token = {"accessToken": OLD_ACCESS, "refreshToken": OLD_REFRESH, "expiresAt": expires_ms, "scopes": []}
    path.write_text(json.dumps({"claudeAiOauth": token}))
    return path


def _call(proxy: Proxy) -> str:
    with anthropic_client(proxy, ALICE_KEY, timeout=60) as client:
        [block] = client.messages.create(**MESSAGE).content
    return block.text  # type: ignore[union-attr]


def test_two_proxies_on_postgresql_refresh_a_token_expiring_mid_run_exactly_once(
    fake: FakeProvider,
    start_proxy: ProxyFactory,
    postgres_server: PostgresServer,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    credentials = write_credentials_due_in(tmp_path / "credentials.json", 6)
    config = oauth_config(credentials)
    proxies = [
        start_proxy(set_db=False, config_toml=config, env=ENV, extra_args=_on(postgres_url)) for _ in "ab"
    ]
    fake.grant(OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)  # single use: a second refresh would be refused
    fake.accepted_credentials = {OLD_ACCESS, NEW_ACCESS}
    fake.oauth_delay = 1.0  # both proxies call while the one refresh is under way

    texts: list[str] = []
    carried = {proxy.port: f"Bearer {OLD_ACCESS}" for proxy in proxies}  # what each proxy's last call carried
    deadline = time.monotonic() + DEADLINE_S
    while set(carried.values()) != {f"Bearer {NEW_ACCESS}"}:  # the token comes due meanwhile
        assert time.monotonic() < deadline, f"the proxies never all moved to the refreshed token: {carried}"
        for proxy in proxies:  # one call at a time: the provider's newest request is this proxy's
            texts.append(_call(proxy))
            carried[proxy.port] = api_requests(fake)[-1].header("authorization") or ""

    assert texts == [DEFAULT_TEXT] * len(texts)
    [refresh] = fake.token_requests
    assert refresh.json()["refresh_token"] == OLD_REFRESH
    sent = [r.header("authorization") for r in api_requests(fake)]
    assert sent[0] == f"Bearer {OLD_ACCESS}"  # the token came due mid-run, not before it
    assert set(sent) == {f"Bearer {OLD_ACCESS}", f"Bearer {NEW_ACCESS}"}
    rows = _wait_for_rows(postgres_url, len(texts))
    assert len(rows) == len(texts) and {row["status"] for row in rows} == {200}
    assert_no_secret(json.dumps(rows, default=str))
    with psycopg.connect(postgres_url) as conn:
        version, stored = conn.execute(
            "select version, access_token from sluice_secrets.oauth_tokens"
        ).fetchone()
        events = conn.execute("select event from credential_events where event = 'refreshed'").fetchall()
    assert (version, stored) == (2, NEW_ACCESS)
    assert events == [("refreshed",)]
    for proxy in proxies:
        proxy.stop()
        log = proxy.log_path.read_text(errors="replace")
        assert_no_secret(log, OAUTH_TOKENS)
        assert postgres_server.password not in log
        assert not proxy.tracebacks()


def test_with_postgresql_away_a_proxy_keeps_calling_on_the_token_and_pool_it_last_knew(
    fake: FakeProvider,
    start_proxy: ProxyFactory,
    start_postgres: Callable[[], PostgresServer],
    tmp_path: Path,
) -> None:
    server = start_postgres()
    url = server.create_database()
    credentials = write_credentials_due_in(tmp_path / "credentials.json", 3600)
    proxy = start_proxy(set_db=False, config_toml=oauth_config(credentials), env=ENV, extra_args=_on(url))
    fake.accepted_credentials = {OLD_ACCESS}
    assert _call(proxy) == DEFAULT_TEXT

    server.stop()
    deadline = time.monotonic() + DEADLINE_S
    while "using the last known ones" not in proxy.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the pool never said it decides from its last view"
        assert _call(proxy) == DEFAULT_TEXT  # the database is away: the client notices nothing
    server.start()
    while "credential states can be read again" not in proxy.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline + DEADLINE_S, "the pool never read the database again"
        assert _call(proxy) == DEFAULT_TEXT

    assert fake.token_requests == []
    assert {r.header("authorization") for r in api_requests(fake)} == {f"Bearer {OLD_ACCESS}"}
    proxy.stop()
    log = proxy.log_path.read_text(errors="replace")
    assert_no_secret(log, OAUTH_TOKENS)
    assert server.password not in log
    assert not proxy.tracebacks()
