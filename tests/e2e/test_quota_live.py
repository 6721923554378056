"""Quota without waiting for traffic (issue #14): `sluice quota --live` and the proxy's `sluice_quota_poll`.

Both read the fake provider's OAuth usage endpoint under its real name (`api.anthropic.com:443`, over TLS
verified against the test CA) with the OAuth login of the config, and record the windows where `sluice quota`
shows them. The real `sluice` command runs as a subprocess, its names resolved to the fake the way mitmdump's
are (tests/e2e/sitecustomize).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import REPO_ROOT, SITECUSTOMIZE_DIR, Proxy, clean_env
from tests.e2e.test_credentials import (
    ENV,
    NEW_ACCESS,
    NEW_REFRESH,
    OAUTH_BETA,
    OAUTH_TOKENS,
    OLD_REFRESH,
    assert_no_secret,
    oauth_config,
    write_expired_credentials,
)
from tests.fake_provider import OAUTH_USAGE_PATH, USAGE_RATE_LIMITED_429, USAGE_SCOPE_403, FakeProvider

pytestmark = pytest.mark.e2e

VALID_ACCESS = "sk-ant-oat01-STILL-VALID-ACCESS-TOKEN-5e6f7a8b9c0d"
VALID_REFRESH = "sk-ant-ort01-UNUSED-REFRESH-TOKEN-0d9c8b7a6f5e4d3c"
SECRETS = (*OAUTH_TOKENS, VALID_ACCESS, VALID_REFRESH)
LABEL_PREFIX = "oauth file:"
RUN_TIMEOUT = 60.0


def write_valid_credentials(path: Path) -> Path:
    """A flat credentials file (the other shape sluice reads) whose access token is good for another hour."""
    tokens = {"access_token": VALID_ACCESS, "refresh_token": VALID_REFRESH, "expires_at": time.time() + 3600}
    path.write_text(json.dumps(tokens))
    return path


def sluice(fake: FakeProvider, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `sluice` command of this checkout, in `workdir`, with the provider names sent to `fake` and
    the test CA as the trusted roots (the default TLS context honours SSL_CERT_FILE)."""
    assert fake.ca_pem is not None
    env = clean_env(
        {
            "PYTHONPATH": os.pathsep.join([str(SITECUSTOMIZE_DIR), str(REPO_ROOT)]),
            "SLUICE_TEST_HOSTS": fake.hosts_env(),
            "SSL_CERT_FILE": str(fake.ca_pem),
            **ENV,
        }
    )
    env.pop("SLUICE_DB", None)
    env.pop("SLUICE_CONFIG", None)
    command = [sys.executable, "-c", "import sys; from state.cli import main; sys.exit(main())", *args]
    return subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )


def live(fake: FakeProvider, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return sluice(fake, tmp_path, "quota", "--live", "--config", "sluice.toml", "--db", "sluice.db", *args)


def rate_limit_rows(db_path: Path) -> dict[str, dict[str, Any]]:
    """`rate_limits`, by header name ({} before the table exists)."""
    if not db_path.exists():
        return {}
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return {row["header"]: dict(row) for row in conn.execute("select * from rate_limits")}
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return {}
        raise
    finally:
        conn.close()


def wait_for_reading(db_path: Path, header: str, value: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    rows: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        rows = rate_limit_rows(db_path)
        if rows.get(header, {}).get("value") == value:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"{header}={value} not recorded after {timeout}s: {rows}")


def files_text(directory: Path) -> str:
    """Every file under `directory` but the login's credentials file and the OAuth store (which hold tokens
    by design), as text (to look for tokens in)."""
    return "".join(
        path.read_bytes().decode("latin-1")
        for path in directory.rglob("*")
        if path.is_file() and ".secrets." not in path.name and path.name != "credentials.json"
    )


# sluice quota --live


def credential_row(db_path: Path) -> dict[str, Any]:
    with closing(sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("select * from credentials where kind = 'oauth'").fetchone())


def credential_history(db_path: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("select * from credential_events order by id")]


def test_live_shows_the_windows_and_plain_quota_shows_them_afterwards(
    fake: FakeProvider, tmp_path: Path
) -> None:
    credentials = write_valid_credentials(tmp_path / "credentials.json")
    (tmp_path / "sluice.toml").write_text(oauth_config(credentials))
    fake.know_token(VALID_ACCESS)

    result = live(fake, tmp_path)

    assert result.returncode == 0, result.stderr
    assert "api.anthropic.com" in result.stdout
    assert "from the OAuth usage endpoint" in result.stdout
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()[:2] in ("5h", "7d")}
    assert "61% used" in lines["5h"] and "in 2h" in lines["5h"]
    assert "13% used" in lines["7d"]
    assert "4% used" in lines["7d_sonnet"]
    [seen] = fake.requests  # no refresh: the token was good
    assert seen.method == "GET" and seen.path == OAUTH_USAGE_PATH
    assert (seen.sni, seen.header("host")) == ("api.anthropic.com", "api.anthropic.com")
    assert seen.header("authorization") == f"Bearer {VALID_ACCESS}"
    assert OAUTH_BETA in seen.header("anthropic-beta")

    plain = sluice(fake, tmp_path, "quota", "--json", "--db", "sluice.db")
    assert plain.returncode == 0, plain.stderr
    [quota] = json.loads(plain.stdout)
    assert quota["host"] == "api.anthropic.com"
    assert quota["credential"] == f"{LABEL_PREFIX}{credentials}"
    assert quota["call_id"] == "oauth-usage"
    windows = {w["name"]: w["utilization"] for w in quota["unified"]["windows"]}
    assert windows == {"5h": 0.61, "7d": 0.13, "7d_sonnet": 0.04}
    statusline = sluice(fake, tmp_path, "quota", "--statusline", "--db", "sluice.db")
    assert statusline.stdout.startswith("5h 61% · 7d 13% · 7d_sonnet 4% · resets 2h"), statusline.stdout
    assert_no_secret(result.stdout + result.stderr + plain.stdout + files_text(tmp_path), SECRETS)


def test_live_refreshes_an_expired_token_first_and_only_once(fake: FakeProvider, tmp_path: Path) -> None:
    credentials = write_expired_credentials(tmp_path / "credentials.json")
    (tmp_path / "sluice.toml").write_text(oauth_config(credentials))
    fake.grant(OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)  # the fake knows NEW_ACCESS once it has issued it

    first = live(fake, tmp_path, "--json")
    fake.oauth_usage = {"five_hour": {"utilization": 75.5, "resets_at": None}}
    second = live(fake, tmp_path, "--json")

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    [refresh] = fake.token_requests  # the second run used the refreshed token from the store
    assert refresh.json()["refresh_token"] == OLD_REFRESH
    usage = fake.usage_requests
    assert [r.header("authorization") for r in usage] == [f"Bearer {NEW_ACCESS}"] * 2
    assert usage[0].received_at > refresh.received_at
    [reading] = json.loads(first.stdout)
    assert {w["name"]: w["utilization"] for w in reading["unified"]["windows"]}["5h"] == 0.61
    [reading] = json.loads(second.stdout)
    assert [(w["name"], w["utilization"], w["reset_at"]) for w in reading["unified"]["windows"]] == [
        ("5h", 0.755, None)
    ]
    rows = rate_limit_rows(tmp_path / "sluice.db")
    assert rows["anthropic-ratelimit-unified-5h-utilization"]["value"] == "0.755"
    assert {row["call_id"] for row in rows.values()} == {"oauth-usage"}
    assert_no_secret(first.stdout + first.stderr + second.stdout + files_text(tmp_path), SECRETS)


@pytest.mark.parametrize(
    ("status", "body", "headers", "says"),
    [
        (403, USAGE_SCOPE_403, (), "lacks the user:profile scope"),
        (429, USAGE_RATE_LIMITED_429, (("retry-after", "120"),), "rate limiting (429, rate_limit_error"),
    ],
)
def test_live_says_why_the_endpoint_refused(
    fake: FakeProvider,
    tmp_path: Path,
    status: int,
    body: dict[str, Any],
    headers: tuple[tuple[str, str], ...],
    says: str,
) -> None:
    credentials = write_valid_credentials(tmp_path / "credentials.json")
    (tmp_path / "sluice.toml").write_text(oauth_config(credentials))
    fake.know_token(VALID_ACCESS)
    fake.next(path=OAUTH_USAGE_PATH, status=status, body=body, headers=headers)

    result = live(fake, tmp_path)

    assert result.returncode == 1
    assert says in result.stderr
    assert f"api.anthropic.com {LABEL_PREFIX}{credentials}" in result.stderr
    assert rate_limit_rows(tmp_path / "sluice.db") == {}
    assert_no_secret(result.stdout + result.stderr, SECRETS)


def test_live_needs_a_config_with_an_oauth_upstream(fake: FakeProvider, tmp_path: Path) -> None:
    (tmp_path / "sluice.toml").write_text('[[upstreams]]\nhost = "api.openai.com"\nprovider = "openai"\n')

    without_config = sluice(fake, tmp_path, "quota", "--live", "--db", "sluice.db")
    without_oauth = live(fake, tmp_path)

    assert without_config.returncode == 1
    assert "--config PATH or $SLUICE_CONFIG" in without_config.stderr
    assert without_oauth.returncode == 1
    assert "no [[upstreams]] with oauth in sluice.toml" in without_oauth.stderr
    assert fake.requests == []


# The proxy's poll


def poll_proxy(start_proxy: ProxyFactory, tmp_path: Path, credentials: Path) -> Proxy:
    """A mitmdump polling every second: the 60 s minimum lowered through the test-only variable."""
    return start_proxy(
        config_toml=oauth_config(credentials),
        env={**ENV, "SLUICE_TEST_QUOTA_POLL_MIN_S": "1"},
        extra_args=["--set", "sluice_quota_poll=1"],
    )


def test_the_proxy_polls_the_usage_without_any_traffic(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    credentials = write_expired_credentials(tmp_path / "credentials.json")
    fake.grant(OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)
    proxy = poll_proxy(start_proxy, tmp_path, credentials)
    assert proxy.db_path is not None

    rows = wait_for_reading(proxy.db_path, "anthropic-ratelimit-unified-5h-utilization", "0.61")
    fake.oauth_usage = {"five_hour": {"utilization": 87.0, "resets_at": "2026-12-04T18:00:00+00:00"}}
    rows = wait_for_reading(proxy.db_path, "anthropic-ratelimit-unified-5h-utilization", "0.87")

    assert rows["anthropic-ratelimit-unified-5h-reset"]["value"] == "2026-12-04T18:00:00+00:00"
    assert rows["anthropic-ratelimit-unified-7d-utilization"]["value"] == "0.13"  # the earlier reading's
    assert {(row["host"], row["call_id"]) for row in rows.values()} == {("api.anthropic.com", "oauth-usage")}
    assert len(fake.token_requests) == 1
    assert fake.requests == [*fake.token_requests, *fake.usage_requests]  # nothing but sluice's own calls
    assert {r.header("authorization") for r in fake.usage_requests} == {f"Bearer {NEW_ACCESS}"}
    plain = sluice(fake, tmp_path, "quota", "--json", "--db", str(proxy.db_path))
    [quota] = json.loads(plain.stdout)
    assert {w["name"]: w["utilization"] for w in quota["unified"]["windows"]}["5h"] == 0.87
    proxy.wait_for_log("subscription usage of api.anthropic.com")
    # The key pool routes by the reading too (the login's room), and its history has the refresh.
    deadline = time.monotonic() + 10
    while (pool := credential_row(proxy.db_path))["headroom"] is None or pool["headroom"] > 0.14:
        assert time.monotonic() < deadline, pool
        time.sleep(0.05)
    assert pool["headroom"] == pytest.approx(0.13) and pool["quota_status"] is None
    assert "refreshed" in [event["event"] for event in credential_history(proxy.db_path)]
    assert proxy.stop() == 0
    assert proxy.tracebacks() == []
    assert_no_secret(proxy.log_text() + files_text(proxy.workdir), SECRETS)


def test_a_failing_usage_endpoint_is_a_warning_and_a_later_try(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    credentials = write_valid_credentials(tmp_path / "credentials.json")
    fake.know_token(VALID_ACCESS)
    fake.next(path=OAUTH_USAGE_PATH, status=500)
    fake.next(path=OAUTH_USAGE_PATH, status=429, body=USAGE_RATE_LIMITED_429, headers=[("retry-after", "2")])
    proxy = poll_proxy(start_proxy, tmp_path, credentials)
    assert proxy.db_path is not None

    wait_for_reading(proxy.db_path, "anthropic-ratelimit-unified-5h-utilization", "0.61")

    first, second, third = fake.usage_requests[:3]
    # Lower bounds only (the event loop may wake a clock tick early): backed off at least the interval,
    assert second.received_at - first.received_at >= 0.9
    assert third.received_at - second.received_at >= 1.9  # and the 429's retry-after
    log = proxy.log_text()
    assert "usage endpoint answered 500" in log
    assert "usage endpoint is rate limiting (429, rate_limit_error: Rate limited." in log
    assert proxy.returncode is None
    assert proxy.stop() == 0
    assert proxy.tracebacks() == []


def test_a_poll_below_the_minimum_stops_start_up(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    from tests.e2e.harness import start_up_failure

    credentials = write_valid_credentials(tmp_path / "credentials.json")
    log = start_up_failure(
        start_proxy,
        tmp_path / "proxy",
        config_toml=oauth_config(credentials),
        env=ENV,
        extra_args=["--set", "sluice_quota_poll=5"],
    )
    assert "sluice_quota_poll: 5 seconds; 0 turns polling off, otherwise at least 60" in log
