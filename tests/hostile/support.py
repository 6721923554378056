"""What the hostile suite's attacks share: the keys at stake, the proxy's config, and the checks.

The config holds three credential hosts (Anthropic, OpenAI, and a gateway on port 8443); the traps of
tests/hostile/traps.py stand where those hosts' wrong ports resolve (`hosts_env`). The fixtures built
on these live in tests/hostile/conftest.py.
"""

from __future__ import annotations

import json

from tests.fake_provider import FakeProvider
from tests.hostile.traps import Trap

CLIENT_KEY = "sluice-client-mallory-47c1e0b9d2"
ANT_KEY = "sk-ant-api03-REAL-HOSTILE-SUITE-ANT-8e2f4c6a1b3d"
OAI_KEY = "sk-proj-REAL-HOSTILE-SUITE-OAI-5b7d9f1e3a2c"
GW_KEY = "gw-REAL-HOSTILE-SUITE-GATEWAY-0c9e8d7f6a5b"
REAL_KEYS = (ANT_KEY, OAI_KEY, GW_KEY)
ENV = {
    "SLUICE_HOSTILE_CLIENT": CLIENT_KEY,
    "SLUICE_HOSTILE_ANT": ANT_KEY,
    "SLUICE_HOSTILE_OAI": OAI_KEY,
    "SLUICE_HOSTILE_GW": GW_KEY,
}
CONFIG = """
[[clients]]
name = "mallory"
key = "env:SLUICE_HOSTILE_CLIENT"

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:SLUICE_HOSTILE_ANT"]

[[upstreams]]
host = "api.openai.com"
provider = "openai"
keys = ["env:SLUICE_HOSTILE_OAI"]

[[upstreams]]
host = "gateway.sluice.test:8443"
provider = "openai"
keys = ["env:SLUICE_HOSTILE_GW"]
"""
MESSAGE = json.dumps(
    {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
)
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
ANTHROPIC_AUTH = ("-H", f"x-api-key: {CLIENT_KEY}", "-H", "anthropic-version: 2023-06-01")
OPENAI_AUTH = ("-H", f"authorization: Bearer {CLIENT_KEY}")


def hosts_env(fake: FakeProvider, plain_trap: Trap, tls_trap: Trap) -> str:
    """The provider names resolve to the fake; their wrong ports, to the traps."""
    return ",".join(
        [
            fake.hosts_env(),
            f"api.anthropic.com:80=127.0.0.1:{plain_trap.port}",
            f"api.openai.com:80=127.0.0.1:{plain_trap.port}",
            f"api.anthropic.com:8443=127.0.0.1:{tls_trap.port}",
            f"gateway.sluice.test:443=127.0.0.1:{tls_trap.port}",
        ]
    )


def assert_refused(result: object, status: int, provider: str, *words: str) -> None:
    got_status, _headers, body = result  # type: ignore[misc]
    assert got_status == status, (got_status, body)
    error = json.loads(body)
    if provider == "anthropic":
        assert error["type"] == "error" and error["error"]["type"]
        message = error["error"]["message"]
    else:
        message = error["error"]["message"]
    assert message.startswith("sluice: ")
    for word in words:
        assert word in message


def assert_fake_saw_nothing(fake: FakeProvider) -> None:
    assert fake.requests == [], [(r.sni, r.header("host"), r.path) for r in fake.requests]


def assert_keys_went_only_where_they_belong(fake: FakeProvider) -> None:
    """Every real key the fake received came over TLS, named the key's own host, with that SNI."""
    owners = {ANT_KEY: "api.anthropic.com", OAI_KEY: "api.openai.com", GW_KEY: "gateway.sluice.test"}
    for request in fake.requests:
        raw = json.dumps(request.headers) + request.body.decode("latin-1")
        for key, host in owners.items():
            if key in raw:
                assert request.tls and request.sni == host, (request.sni, request.headers)
                assert (request.header("host") or "").split(":")[0].lower().rstrip(".") == host
