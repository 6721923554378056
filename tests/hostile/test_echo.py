"""An upstream that echoes the real credential back: the echo never reaches the client, the database, the
log or a saved flow; the credential's fingerprint stands in its place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rules.secrets import fingerprint
from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import curl
from tests.fake_provider import FakeProvider
from tests.hostile.support import ANT_KEY, ANTHROPIC_AUTH, CONFIG, ENV, MESSAGE, REAL_KEYS

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("status", [400, 401])
def test_an_echoed_credential_is_replaced_by_its_fingerprint(
    start_proxy: ProxyFactory, fake: FakeProvider, tmp_path: Path, status: int
) -> None:
    saved = tmp_path / "flows.mitm"
    proxy = start_proxy(config_toml=CONFIG, env=ENV, extra_args=["-w", str(saved)])
    echo = {
        "type": "error",
        "error": {"type": "authentication_error", "message": f"invalid x-api-key: {ANT_KEY}"},
    }
    fake.next(status=status, body=echo, headers=[("x-echo-key", f"key={ANT_KEY}")])
    result = curl(proxy, "https://api.anthropic.com/v1/messages", *ANTHROPIC_AUTH, "-d", MESSAGE)
    stand_in = f"[credential {fingerprint(ANT_KEY)}]"
    assert result.status == status
    assert json.loads(result.body)["error"]["message"] == f"invalid x-api-key: {stand_in}"
    assert result.header("x-echo-key") is None  # not an allowed header: dropped before the scrub matters
    [row] = proxy.wait_for_rows(1)
    assert stand_in in (row["error"] or "")
    assert "the upstream echoed the real credential" in row["rules_applied"]
    proxy.stop()
    everything = saved.read_bytes() + proxy.log_text().encode()
    for path in proxy.workdir.glob("sluice.db*"):
        if "secrets" not in path.name:
            everything += path.read_bytes()
    for key in REAL_KEYS:
        assert key.encode() not in everything


def test_an_echo_in_an_allowed_header_is_scrubbed(start_proxy: ProxyFactory, fake: FakeProvider) -> None:
    proxy = start_proxy(config_toml=CONFIG, env=ENV)
    fake.next(status=400, headers=[("request-id", f"req_{ANT_KEY}")])
    result = curl(proxy, "https://api.anthropic.com/v1/messages", *ANTHROPIC_AUTH, "-d", MESSAGE)
    assert result.header("request-id") == f"req_[credential {fingerprint(ANT_KEY)}]"
    [row] = proxy.wait_for_rows(1)
    assert ANT_KEY not in json.dumps(row)
