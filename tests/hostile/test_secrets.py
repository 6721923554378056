"""Secrets that would smuggle a second request, and config typos that would print a key: refused at start,
naming the field and never the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import start_up_failure
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e

SMUGGLER = "sk-ant-api03-REAL\r\nX-Smuggled: 1\r\n\r\nGET /v1/models HTTP/1.1"
TYPO_KEY = "sk-ant-api03-REAL-KEY-IN-A-TYPO-0b1c2d"


def test_a_key_with_a_line_break_stops_start_up_naming_the_field(
    start_proxy: ProxyFactory, fake: FakeProvider, tmp_path: Path
) -> None:
    config = """
[[clients]]
name = "alice"
key = "env:SLUICE_SECRETS_CLIENT"

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:SLUICE_SECRETS_SMUGGLER"]
"""
    env = {"SLUICE_SECRETS_CLIENT": "sluice-client-alice-1234", "SLUICE_SECRETS_SMUGGLER": SMUGGLER}
    log = start_up_failure(start_proxy, tmp_path / "smuggler", config_toml=config, env=env)
    assert "upstreams[0].keys[0]: the secret cannot be used: it contains a line break" in log
    assert "X-Smuggled" not in log and "sk-ant-api03-REAL" not in log
    assert fake.requests == []


def test_a_typo_next_to_a_key_stops_start_up_without_printing_it(
    start_proxy: ProxyFactory, fake: FakeProvider, tmp_path: Path
) -> None:
    config = f"""
[[clients]]
name = "alice"
kye = "{TYPO_KEY}"
"""
    log = start_up_failure(start_proxy, tmp_path / "typo", config_toml=config)
    assert 'clients[0].kye: unknown field (did you mean "key"?)' in log
    assert "clients[0].key: missing: this field is required" in log
    assert TYPO_KEY not in log
