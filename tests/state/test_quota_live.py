from __future__ import annotations

import asyncio
import json
import ssl
from datetime import UTC, datetime
from pathlib import Path

from rules.config import OAuth, Upstream
from state import report
from state import store as state_db
from state.oauth import OAuthStore
from state.quota_live import (
    UsageReading,
    credential_label,
    last_reading_at,
    read_live,
    read_usage,
    row_host,
)
from state.ratelimits import statusline
from state.writer import CallRecord, RecordWriter
from tests.fake_provider import FakeProvider

AT = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
TOKEN = "sk-ant-oat01-QUOTA-LIVE-TEST-TOKEN-9f8e7d6c5b4a"


def upstream(credentials: str = "file:login.json", host: str = "localhost", port: int = 443) -> Upstream:
    return Upstream(host=host, port=port, provider="anthropic", oauth=OAuth(credentials=credentials))


def test_rows_name_the_upstream_and_the_credential_as_calls_do() -> None:
    assert row_host(upstream(host="api.anthropic.com")) == "api.anthropic.com"
    assert row_host(upstream(host="gateway.internal", port=8443)) == "gateway.internal:8443"
    assert credential_label(OAuth(credentials="file:login.json")) == "oauth file:login.json"


def test_a_reading_is_shown_by_sluice_quota_beside_the_headers_of_calls(tmp_path: Path) -> None:
    path = tmp_path / "sluice.db"
    call = CallRecord(
        row={
            "id": "call-1",
            "started_at": AT.isoformat(),
            "host": "api.anthropic.com",
            "path": "/v1/messages",
        },
        rate_limits=[
            ("anthropic-ratelimit-unified-5h-utilization", "0.5"),
            ("anthropic-ratelimit-unified-status", "allowed"),
        ],
        host="api.anthropic.com",
        credential="oauth file:login.json",
        observed_at="2026-11-23T09:59:00+00:00",
    )
    reading = UsageReading(
        host="api.anthropic.com",
        credential="oauth file:login.json",
        headers=(
            ("anthropic-ratelimit-unified-5h-utilization", "0.61"),
            ("anthropic-ratelimit-unified-7d-utilization", "0.13"),
        ),
        observed_at=AT,
    )
    writer = RecordWriter(lambda: state_db.connect(path))
    writer.start()
    writer.put(call)
    writer.put(reading.record())
    writer.close()

    db = state_db.connect(path)
    [quota] = report.quota(db)
    assert quota.call_id == "oauth-usage"  # the newest row came from the endpoint
    unified = quota.summary.unified
    assert unified is not None
    assert unified.status == "allowed"  # from the call's headers
    assert [(w.name, w.utilization) for w in unified.windows] == [("5h", 0.61), ("7d", 0.13)]
    assert last_reading_at(db, "api.anthropic.com", "oauth file:login.json") == AT
    assert last_reading_at(db, "api.anthropic.com", "keys[0] env:KEY") is None


def test_read_usage_asks_only_the_configured_host_and_port(fake: FakeProvider) -> None:
    fake.know_token(TOKEN)
    context = ssl.create_default_context(cafile=str(fake.ca_pem))

    reading = read_usage(upstream(port=fake.port), TOKEN, context)

    assert [r.sni for r in fake.requests] == ["localhost"]
    assert reading.host == f"localhost:{fake.port}"
    assert reading.credential == "oauth file:login.json"
    assert dict(reading.headers)["anthropic-ratelimit-unified-5h-utilization"] == "0.61"
    assert statusline(reading.summary, reading.observed_at).startswith(
        "5h 61% · 7d 13% · 7d_sonnet 4% · resets 2h"
    )


def test_read_live_says_why_for_each_upstream_that_fails_and_reads_the_others(
    fake: FakeProvider, tmp_path: Path
) -> None:
    login = tmp_path / "login.json"
    login.write_text(json.dumps({"access_token": TOKEN, "expires_at": AT.timestamp() + 10**9}))
    fake.know_token(TOKEN)
    store = OAuthStore(tmp_path / "sluice.secrets.db")
    context = ssl.create_default_context(cafile=str(fake.ca_pem))
    upstreams = [
        upstream("file:missing.json", host="one.test"),
        upstream("file:login.json", port=fake.port),
    ]
    try:
        results = asyncio.run(read_live(upstreams, store, tmp_path, context))
    finally:
        store.close()

    failure, reading = results
    assert isinstance(failure, str) and failure.startswith("one.test oauth file:missing.json: ")
    assert "missing.json" in failure
    assert isinstance(reading, UsageReading)
    assert [r.header("authorization") for r in fake.requests] == [f"Bearer {TOKEN}"]
