"""The example configs in examples/ load, start a real mitmdump, and carry a call with a client key to the
fake provider with the real credential swapped in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rules.config import load_config
from state.doctor import secret_references
from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import REPO_ROOT, curl
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.toml"))
MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def test_every_common_set_up_has_an_example() -> None:
    assert {path.name for path in EXAMPLES} == {
        "team-key-pool.toml",
        "claude-code-oauth.toml",
        "ci-budgets.toml",
        "shared-subscription.toml",
    }


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_an_example_starts_the_proxy_and_swaps_the_credential(
    example: Path, fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    config = load_config(example)
    env = {}
    for field, reference in secret_references(config):
        assert reference.startswith("env:"), f"{example.name}: {field} should name an environment variable"
        env[reference[4:]] = f"value-of-{reference[4:].lower().replace('_', '-')}"
    proxy = start_proxy(tmp_path / example.stem, config_toml=example.read_text(), env=env)
    client_key = env[config.clients[0].key[4:]]
    result = curl(
        proxy,
        "https://api.anthropic.com/v1/messages",
        "-H",
        f"x-api-key: {client_key}",
        "-H",
        "anthropic-version: 2023-06-01",
        "-H",
        "content-type: application/json",
        "--data-binary",
        json.dumps(MESSAGE),
    )
    assert result.status == 200, result.body
    [seen] = fake.requests
    credential = seen.header("x-api-key") or (seen.header("authorization") or "").removeprefix("Bearer ")
    upstream = config.upstreams[0]
    real = upstream.keys[0] if upstream.keys else upstream.oauth.credentials  # type: ignore[union-attr]
    assert credential == env[real[4:]]  # the real credential on the wire, never the client key
    assert client_key not in json.dumps(seen.headers)
    assert proxy.tracebacks() == []
