"""Credentials end to end (issue #3): a real mitmdump with sluice, real clients, the fake provider behind it.

Clients hold placeholder client keys; sluice swaps in the real upstream credential from a pool, refreshes
OAuth tokens, and never lets a real credential reach a client, a log, the database or a saved flow.
Everything is checked where it lands: what the fake received, what the client got, what the database says.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import (
    Proxy,
    anthropic_client,
    async_anthropic_client,
    curl,
    openai_client,
)
from tests.fake_provider import DEFAULT_TEXT, OAUTH_TOKEN_PATH, FakeProvider

pytestmark = pytest.mark.e2e

# Client keys: the placeholders a client holds. Real keys: what only sluice and the provider may see.
ALICE_KEY = "sluice-client-alice-6f1d2a9c4e"
ANT_KEY_1 = "sk-ant-api03-REAL-FIRST-KEY-9b2c71d0e4a84f3b"
ANT_KEY_2 = "sk-ant-api03-REAL-SECOND-KEY-3e8d5a1c7f6b42a9"
OAI_KEY = "sk-proj-REAL-OPENAI-KEY-5d7e9f1a3b4c6d8e"
GATEWAY_KEY = "gw-REAL-GATEWAY-KEY-0a1b2c3d4e5f6a7b"
REAL_KEYS = (ANT_KEY_1, ANT_KEY_2, OAI_KEY, GATEWAY_KEY)

# OAuth tokens in Claude Code's shape; the fake's token endpoint exchanges OLD_REFRESH once for the new pair.
OLD_ACCESS = "sk-ant-oat01-EXPIRED-ACCESS-TOKEN-1c2d3e4f5a6b7c8d"
OLD_REFRESH = "sk-ant-ort01-FIRST-REFRESH-TOKEN-8d7c6b5a4f3e2d1c"
NEW_ACCESS = "sk-ant-oat01-FRESH-ACCESS-TOKEN-a1b2c3d4e5f60718"
NEW_REFRESH = "sk-ant-ort01-ROTATED-REFRESH-TOKEN-f0e1d2c3b4a59687"
OAUTH_TOKENS = (OLD_ACCESS, OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)
CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
TOKEN_URL = "https://console.anthropic.com/v1/oauth/token"
OAUTH_BETA = "oauth-2025-04-20"

ENV = {
    "SLUICE_E2E_ALICE": ALICE_KEY,
    "SLUICE_E2E_ANT_1": ANT_KEY_1,
    "SLUICE_E2E_ANT_2": ANT_KEY_2,
    "SLUICE_E2E_OAI": OAI_KEY,
    "SLUICE_E2E_GATEWAY": GATEWAY_KEY,
}
LABEL_1 = "keys[0] env:SLUICE_E2E_ANT_1"
LABEL_2 = "keys[1] env:SLUICE_E2E_ANT_2"

CLIENTS = """
[[clients]]
name = "alice"
key = "env:SLUICE_E2E_ALICE"
"""
ANTHROPIC_POOL = """
[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:SLUICE_E2E_ANT_1", "env:SLUICE_E2E_ANT_2"]
"""
OPENAI_UPSTREAM = """
[[upstreams]]
host = "api.openai.com"
provider = "openai"
keys = ["env:SLUICE_E2E_OAI"]
"""
SWAP_CONFIG = CLIENTS + ANTHROPIC_POOL + OPENAI_UPSTREAM
POOL_CONFIG = CLIENTS + ANTHROPIC_POOL

MODEL = "claude-haiku-4-5"
MESSAGE: dict[str, Any] = {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES_URL = "https://api.anthropic.com/v1/messages"


# Helpers.


def post_message(proxy: Proxy, *headers: str, url: str = MESSAGES_URL, body: dict[str, Any] = MESSAGE):
    """curl a Messages call; `headers` are `name: value` strings."""
    args = [arg for header in headers for arg in ("-H", header)]
    return curl(proxy, url, *args, "--json", json.dumps(body))


def api_requests(fake: FakeProvider) -> list:
    """What the fake received on the provider APIs (the OAuth token endpoint left out)."""
    return [r for r in fake.requests if r.path != OAUTH_TOKEN_PATH]


def credential_states(db_path: Path) -> dict[str, dict[str, Any]]:
    """The `credentials` table, by label."""
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        return {row["label"]: dict(row) for row in conn.execute("select * from credentials")}
    finally:
        conn.close()


def assert_no_secret(text: str, secrets: tuple[str, ...] = REAL_KEYS + OAUTH_TOKENS) -> None:
    leaked = [secret[:16] + "…" for secret in secrets if secret in text]
    assert not leaked, f"real credentials leaked: {leaked}"


def oauth_config(credentials_file: Path, *, extra: str = "") -> str:
    return (
        CLIENTS
        + f"""
[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
oauth = {{ credentials = "file:{credentials_file}", token_url = "{TOKEN_URL}", client_id = "{CLIENT_ID}" }}
"""
        + extra
    )


def write_expired_credentials(path: Path) -> Path:
    """A Claude Code `.credentials.json` whose access token expired a minute ago."""
    expired_ms = int((time.time() - 60) * 1000)
    path.write_text(
        json.dumps(
            {
                "claudeAiOauth": {
                    "accessToken": OLD_ACCESS,
                    "refreshToken": OLD_REFRESH,
                    "expiresAt": expired_ms,
                    "scopes": ["user:inference", "user:profile"],
                }
            }
        )
    )
    return path


# One proxy for the tests that leave the pool as they found it (every call succeeds or never leaves).


@pytest.fixture(scope="module")
def swap_proxy(module_start_proxy: ProxyFactory) -> Proxy:
    return module_start_proxy(config_toml=SWAP_CONFIG, env=ENV)


# The swap.


def test_curl_client_key_in_x_api_key_is_swapped_for_the_real_key(
    fake: FakeProvider, swap_proxy: Proxy
) -> None:
    since = swap_proxy.mark()
    result = post_message(swap_proxy, f"x-api-key: {ALICE_KEY}")

    assert result.status == 200, result.body
    [seen] = fake.requests
    assert seen.header("x-api-key") == ANT_KEY_1
    assert seen.header("authorization") is None
    assert not [name for name, value in seen.headers if ALICE_KEY in value]
    assert_no_secret(json.dumps(result.headers) + result.body.decode())
    [row] = swap_proxy.wait_for_rows(1, since=since)
    assert row["client"] == "alice"
    assert row["credential"] == LABEL_1
    assert_no_secret(json.dumps(row))


def test_anthropic_sdk_bearer_client_key_is_swapped_for_the_real_key(
    fake: FakeProvider, swap_proxy: Proxy
) -> None:
    since = swap_proxy.mark()
    with anthropic_client(swap_proxy, ALICE_KEY) as client:
        message = client.messages.create(**MESSAGE)

    assert message.content[0].text == DEFAULT_TEXT
    [seen] = fake.requests
    assert seen.header("x-api-key") == ANT_KEY_1
    assert seen.header("authorization") is None  # the SDK sent `Authorization: Bearer <client key>`
    assert not [name for name, value in seen.headers if ALICE_KEY in value]
    [row] = swap_proxy.wait_for_rows(1, since=since)
    assert (row["client"], row["credential"]) == ("alice", LABEL_1)


def test_openai_sdk_gets_the_real_key_as_a_bearer_token(fake: FakeProvider, swap_proxy: Proxy) -> None:
    since = swap_proxy.mark()
    with openai_client(swap_proxy, ALICE_KEY) as client:
        chat = client.chat.completions.create(**CHAT)

    assert chat.choices[0].message.content == DEFAULT_TEXT
    [seen] = fake.requests
    assert seen.header("authorization") == f"Bearer {OAI_KEY}"
    assert seen.header("x-api-key") is None
    [row] = swap_proxy.wait_for_rows(1, since=since)
    assert (row["client"], row["credential"]) == ("alice", "keys[0] env:SLUICE_E2E_OAI")
    assert_no_secret(json.dumps(row))


def test_the_pool_always_takes_the_first_usable_key(fake: FakeProvider, swap_proxy: Proxy) -> None:
    for _ in range(3):
        assert post_message(swap_proxy, f"x-api-key: {ALICE_KEY}").status == 200
    assert [r.header("x-api-key") for r in fake.requests] == [ANT_KEY_1] * 3


@pytest.mark.parametrize(
    "presented",
    [("x-api-key: sluice-client-nobody",), ("authorization: Bearer sluice-client-nobody",), ()],
    ids=["unknown-x-api-key", "unknown-bearer", "no-key"],
)
def test_unknown_or_missing_client_key_is_refused_in_anthropics_envelope(
    fake: FakeProvider, swap_proxy: Proxy, presented: tuple[str, ...]
) -> None:
    result = post_message(swap_proxy, *presented)

    assert result.status == 401
    body = json.loads(result.body)
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["message"]
    assert fake.requests == []


def test_unknown_client_key_is_refused_in_openais_envelope(fake: FakeProvider, swap_proxy: Proxy) -> None:
    with (
        openai_client(swap_proxy, "sluice-client-nobody") as client,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        client.chat.completions.create(**CHAT)

    envelope = caught.value.response.json()
    assert set(envelope) == {"error"}
    assert envelope["error"]["message"]
    assert envelope["error"]["type"] and "code" in envelope["error"]
    assert fake.requests == []


def test_a_host_without_an_upstream_entry_keeps_the_clients_own_key(
    fake: FakeProvider, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(config_toml=POOL_CONFIG, env=ENV)
    with openai_client(proxy, "sk-the-clients-own-openai-key") as client:
        assert client.chat.completions.create(**CHAT).choices[0].message.content == DEFAULT_TEXT

    [seen] = fake.requests
    assert seen.header("host") == "api.openai.com"
    assert seen.header("authorization") == "Bearer sk-the-clients-own-openai-key"
    assert_no_secret(json.dumps(seen.headers))


# The pool: failover, cooldown, disabling, and state that outlives the process.


def test_429_cools_key_1_and_the_next_request_uses_key_2(
    fake: FakeProvider, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(config_toml=POOL_CONFIG, env=ENV)
    fake.next(status=429, headers=[("retry-after", "120")])
    with anthropic_client(proxy, ALICE_KEY) as client:
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.create(**MESSAGE)
        message = client.messages.create(**MESSAGE)

    headers = caught.value.response.headers
    assert 0 < int(headers["retry-after"]) <= 5  # short: another key is ready now, not in 120 s
    assert headers["x-should-retry"] == "true"
    assert message.content[0].text == DEFAULT_TEXT
    assert [r.header("x-api-key") for r in fake.requests] == [ANT_KEY_1, ANT_KEY_2]
    first, second = proxy.wait_for_rows(2)
    assert (first["status"], first["credential"]) == (429, LABEL_1)
    assert (second["status"], second["credential"]) == (200, LABEL_2)
    states = credential_states(proxy.db_path)
    assert states[LABEL_1]["state"] == "cooling"
    assert states[LABEL_2]["state"] == "active"


def test_401_disables_key_1_and_the_clients_own_retry_lands_on_key_2(
    fake: FakeProvider, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(config_toml=POOL_CONFIG, env=ENV)
    fake.accepted_credentials = {ANT_KEY_2}
    answers: list[tuple[int, dict[str, str]]] = []
    hooks = {"response": [lambda response: answers.append((response.status_code, dict(response.headers)))]}
    # The SDK's own retry logic, as shipped: it retries a 429 that says x-should-retry: true.
    with anthropic_client(proxy, ALICE_KEY, max_retries=1, httpx_kwargs={"event_hooks": hooks}) as client:
        message = client.messages.create(**MESSAGE)

    assert message.content[0].text == DEFAULT_TEXT
    assert [status for status, _ in answers] == [429, 200]  # never the provider's 401
    assert answers[0][1]["x-should-retry"] == "true"
    assert [(r.header("x-api-key"), r.response.status) for r in fake.requests] == [
        (ANT_KEY_1, 401),
        (ANT_KEY_2, 200),
    ]
    states = credential_states(proxy.db_path)
    assert states[LABEL_1]["state"] == "disabled"
    assert "401" in states[LABEL_1]["reason"]
    assert "invalid x-api-key" in states[LABEL_1]["reason"]  # the provider's own words
    assert states[LABEL_2]["state"] == "active"
    assert_no_secret(json.dumps(states))


def test_every_key_cooling_is_answered_by_sluice_with_the_soonest_retry_after(
    fake: FakeProvider, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(config_toml=POOL_CONFIG, env=ENV)
    fake.next(status=429, headers=[("retry-after", "600")])
    fake.next(status=429, headers=[("retry-after", "40")])
    key = f"x-api-key: {ALICE_KEY}"
    assert post_message(proxy, key).status == 429  # key 1 cools for 600 s
    assert post_message(proxy, key).status == 429  # key 2 cools for 40 s
    assert len(fake.requests) == 2

    result = post_message(proxy, key)

    assert len(fake.requests) == 2  # answered by sluice: the fake was not contacted
    assert result.status == 429
    assert 0 < int(result.header("retry-after") or 0) <= 40  # the soonest key, not the 600 s one
    assert result.header("x-should-retry") == "true"
    body = json.loads(result.body)
    assert (body["type"], body["error"]["type"]) == ("error", "rate_limit_error")


def test_every_key_disabled_is_a_503_in_the_envelope_naming_the_cause(
    fake: FakeProvider, start_proxy: ProxyFactory
) -> None:
    proxy = start_proxy(config_toml=POOL_CONFIG, env=ENV)
    fake.accepted_credentials = {"sk-ant-neither-of-ours"}
    key = f"x-api-key: {ALICE_KEY}"
    post_message(proxy, key)  # key 1 refused, disabled
    post_message(proxy, key)  # key 2 refused, disabled
    assert [r.header("x-api-key") for r in fake.requests] == [ANT_KEY_1, ANT_KEY_2]

    result = post_message(proxy, key)

    assert len(fake.requests) == 2
    assert result.status == 503
    body = json.loads(result.body)
    assert body["type"] == "error"
    message = body["error"]["message"]
    assert "disabled" in message
    assert "invalid x-api-key" in message  # why: the provider's refusal
    assert LABEL_1 in message and LABEL_2 in message
    assert_no_secret(result.body.decode())
    states = credential_states(proxy.db_path)
    assert {states[LABEL_1]["state"], states[LABEL_2]["state"]} == {"disabled"}


def test_a_disabled_key_stays_disabled_after_a_restart(fake: FakeProvider, start_proxy: ProxyFactory) -> None:
    first = start_proxy(config_toml=POOL_CONFIG, env=ENV)
    fake.accepted_credentials = {ANT_KEY_2}
    assert post_message(first, f"x-api-key: {ALICE_KEY}").status == 429  # key 1 refused, disabled
    first.stop()
    fake.clear()

    second = start_proxy(first.workdir, config_toml=POOL_CONFIG, env=ENV)
    assert second.db_path == first.db_path
    result = post_message(second, f"x-api-key: {ALICE_KEY}")

    assert result.status == 200
    assert [r.header("x-api-key") for r in fake.requests] == [ANT_KEY_2]  # key 1 not even tried
    assert credential_states(second.db_path)[LABEL_1]["state"] == "disabled"


# OAuth: refresh once per expiry, within a process and across processes.


async def _concurrent_messages(proxies: list[Proxy], per_proxy: int, betas: str) -> list[str]:
    # Generous timeouts: 50 TLS tunnels at once through mitmdump on a busy 2-core machine are slow.
    clients = [
        async_anthropic_client(proxy, ALICE_KEY, timeout=60, httpx_kwargs={"timeout": 60})
        for proxy in proxies
    ]
    try:
        calls = [
            client.messages.create(**MESSAGE, extra_headers={"anthropic-beta": betas})
            for client in clients
            for _ in range(per_proxy)
        ]
        messages = await asyncio.gather(*calls)
    finally:
        for client in clients:
            await client.close()
    return [message.content[0].text for message in messages]


CLIENT_BETAS = "interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"


def test_an_expired_token_is_refreshed_once_for_50_concurrent_requests(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    credentials = write_expired_credentials(tmp_path / "credentials.json")
    proxy = start_proxy(config_toml=oauth_config(credentials), env=ENV)
    fake.grant(OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)
    fake.accepted_credentials = {NEW_ACCESS}
    fake.oauth_delay = 1.0  # the refresh is still under way while the 50 requests arrive

    texts = asyncio.run(_concurrent_messages([proxy], 50, CLIENT_BETAS))

    assert texts == [DEFAULT_TEXT] * 50
    [refresh] = fake.token_requests
    assert all(seen.received_at > refresh.received_at for seen in api_requests(fake))
    assert refresh.header("host") == "console.anthropic.com"
    assert refresh.json() == {
        "grant_type": "refresh_token",
        "refresh_token": OLD_REFRESH,
        "client_id": CLIENT_ID,
    }
    calls = api_requests(fake)
    assert len(calls) == 50
    for seen in calls:
        assert seen.header("authorization") == f"Bearer {NEW_ACCESS}"
        assert seen.header("x-api-key") is None
        [beta] = seen.header_values("anthropic-beta")
        assert beta.startswith(CLIENT_BETAS)  # the client's betas, verbatim
        assert [b.strip() for b in beta.split(",")] == [*CLIENT_BETAS.split(","), OAUTH_BETA]
    rows = proxy.wait_for_rows(50)
    assert {row["status"] for row in rows} == {200}
    assert_no_secret(json.dumps(rows))


def test_two_proxies_sharing_a_database_refresh_an_expired_token_once(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    credentials = write_expired_credentials(tmp_path / "credentials.json")
    workdir = tmp_path / "shared"
    config = oauth_config(credentials)
    first = start_proxy(workdir, config_toml=config, env=ENV)
    second = start_proxy(workdir, config_toml=config, env=ENV)
    assert first.db_path == second.db_path
    fake.grant(OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)  # single use: a second refresh would be refused
    fake.accepted_credentials = {NEW_ACCESS}
    fake.oauth_delay = 1.0  # both processes find the token expired while the one refresh is under way

    texts = asyncio.run(_concurrent_messages([first, second], 25, CLIENT_BETAS))

    assert texts == [DEFAULT_TEXT] * 50
    [refresh] = fake.token_requests
    assert all(seen.received_at > refresh.received_at for seen in api_requests(fake))
    assert {r.header("authorization") for r in api_requests(fake)} == {f"Bearer {NEW_ACCESS}"}
    states = credential_states(first.db_path)
    assert [s["state"] for s in states.values()] == ["active"]


def test_a_refused_refresh_disables_the_credential_and_answers_503(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    credentials = write_expired_credentials(tmp_path / "credentials.json")
    proxy = start_proxy(config_toml=oauth_config(credentials), env=ENV)
    # No grant: the token endpoint answers invalid_grant, "Refresh token not found or invalid".

    result = post_message(proxy, f"x-api-key: {ALICE_KEY}")

    assert len(fake.token_requests) == 1
    assert api_requests(fake) == []
    assert result.status == 503
    body = json.loads(result.body)
    assert body["type"] == "error"
    assert "invalid_grant" in body["error"]["message"]
    [state] = credential_states(proxy.db_path).values()
    assert state["state"] == "disabled"
    assert "invalid_grant" in state["reason"]
    assert "Refresh token not found or invalid" in state["reason"]  # the provider's message
    assert_no_secret(result.body.decode() + json.dumps(state))


# Secrets never show, wherever a person or a file could see them.


def test_no_real_credential_reaches_the_database_saved_flows_or_the_log(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    credentials = write_expired_credentials(tmp_path / "credentials.json")
    flows_file = tmp_path / "flows.mitm"
    config = oauth_config(
        credentials,
        extra=OPENAI_UPSTREAM
        + """
[[upstreams]]
host = "gateway.sluice.test"
provider = "anthropic"
keys = ["env:SLUICE_E2E_GATEWAY"]
""",
    )
    proxy = start_proxy(
        config_toml=config, env=ENV, extra_args=["-w", str(flows_file), "--set", "flow_detail=4"]
    )
    fake.grant(OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)

    with anthropic_client(proxy, ALICE_KEY) as claude, openai_client(proxy, ALICE_KEY) as gpt:
        assert claude.messages.create(**MESSAGE).content[0].text == DEFAULT_TEXT  # OAuth, refreshed
        with claude.messages.stream(**MESSAGE) as stream:
            assert stream.get_final_text() == DEFAULT_TEXT
        assert gpt.chat.completions.create(**CHAT).choices[0].message.content == DEFAULT_TEXT
        assert len(list(gpt.chat.completions.create(**CHAT, stream=True))) > 1
    gateway = "https://gateway.sluice.test/v1/messages"
    assert post_message(proxy, f"x-api-key: {ALICE_KEY}", url=gateway).status == 200
    fake.next(reset_before_response=True)  # a flow that ends in `error`, not `response`
    assert post_message(proxy, f"x-api-key: {ALICE_KEY}", url=gateway).status == 502
    fake.next(status=429)  # the upstream judged the credential: cooled down, rewritten for the client
    post_message(proxy, f"authorization: Bearer {ALICE_KEY}", url=gateway)
    proxy.wait_for_rows(7)
    # A call still waiting for its response when mitmdump stops: `-w` saves it at shutdown.
    fake.next(delay=30)
    arrived = len(fake.requests) + 1
    held = {**CHAT, "model": "gpt-in-flight-at-shutdown"}
    chat_url = "https://api.openai.com/v1/chat/completions"
    in_flight = threading.Thread(
        target=post_message, args=(proxy, f"x-api-key: {ALICE_KEY}"), kwargs={"url": chat_url, "body": held}
    )
    in_flight.start()
    assert fake.wait_for_requests(arrived)[-1].header("authorization") == f"Bearer {OAI_KEY}"
    assert proxy.stop() == 0
    in_flight.join()

    # The real credentials did go upstream...
    sent = json.dumps([[r.headers, r.body.decode()] for r in fake.requests])
    for secret in (NEW_ACCESS, OAI_KEY, GATEWAY_KEY, OLD_REFRESH):
        assert secret in sent
    # ...and the files saw the client's placeholder instead (the dump shows headers; the flows were saved).
    log = proxy.log_text()
    saved = flows_file.read_bytes()
    assert ALICE_KEY in log and "gateway.sluice.test" in log
    assert ALICE_KEY.encode() in saved and b"api.openai.com" in saved
    assert b"gpt-in-flight-at-shutdown" in saved

    main_db = sorted(proxy.workdir.glob("sluice.db*"))
    secrets_db = sorted(proxy.workdir.glob("sluice.secrets.db*"))
    assert proxy.db_path in main_db and secrets_db
    for path in [*main_db, flows_file, proxy.log_path]:
        data = path.read_bytes()
        leaked = [s[:16] for s in REAL_KEYS + OAUTH_TOKENS if s.encode() in data]
        assert not leaked, f"{path.name} holds real credentials: {leaked}"
    # The secrets file holds the OAuth tokens by design (that is what it is for), never an API key.
    for path in secrets_db:
        data = path.read_bytes()
        assert not [s[:16] for s in REAL_KEYS if s.encode() in data], path.name
    assert stat.S_IMODE(os.stat(proxy.workdir / "sluice.secrets.db").st_mode) == 0o600


@pytest.mark.parametrize(("listen_host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_listening_beyond_loopback_with_swap_enabled_warns_loudly(
    fake: FakeProvider, start_proxy: ProxyFactory, listen_host: str, warned: bool
) -> None:
    proxy = start_proxy(config_toml=POOL_CONFIG, env=ENV, extra_args=["--listen-host", listen_host])
    assert post_message(proxy, f"x-api-key: {ALICE_KEY}").status == 200
    assert proxy.stop() == 0

    log = proxy.log_text()
    assert ("WARNING" in log and "credential swap enabled" in log) is warned, log
    if warned:
        assert "listening on 0.0.0.0" in log


# Configuration errors.


def test_an_unset_env_reference_stops_start_up_naming_the_field(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    assert "SLUICE_E2E_NEVER_SET" not in os.environ
    config = CLIENTS + ANTHROPIC_POOL.replace('"env:SLUICE_E2E_ANT_2"', '"env:SLUICE_E2E_NEVER_SET"')
    workdir = tmp_path / "bad-config"

    # mitmproxy reports the script's error, may open its port for a moment, then exits with status 1
    # ("Error logged during startup, exiting..."): the harness sees either the exit or a dying process.
    try:
        proxy = start_proxy(workdir, config_toml=config, env=ENV)
    except RuntimeError as e:
        assert "exited with 1" in str(e)
    else:
        assert proxy.process.wait(timeout=15) == 1

    [log_file] = workdir.glob("mitmdump-*.log")
    log = log_file.read_text()
    assert "upstreams[0].keys[1]" in log
    assert "SLUICE_E2E_NEVER_SET" in log
    assert_no_secret(log)
    assert ALICE_KEY not in log


def test_mitmweb_never_holds_the_real_key_while_a_call_is_in_flight(
    fake: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """The request has gone upstream with the real key and the answer is still pending: whatever mitmweb
    serves then — the flow list, one flow, a dump of every flow — carries only the client's key."""
    import urllib.request

    proxy = start_proxy(program="mitmweb", config_toml=SWAP_CONFIG, env=ENV)
    fake.next(delay=3.0)
    call = threading.Thread(target=post_message, args=(proxy, f"x-api-key: {ALICE_KEY}"))
    call.start()
    try:
        deadline = time.monotonic() + 10
        while not api_requests(fake) and time.monotonic() < deadline:
            time.sleep(0.02)
        [sent] = api_requests(fake)
        assert sent.header("x-api-key") == ANT_KEY_1  # upstream got the real key, and is still answering

        def fetch(path: str) -> str:
            url = f"{proxy.web_url}{path}?token={proxy.web_token}"
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.read().decode("latin-1")

        flows = json.loads(fetch("/flows"))
        [flow] = [f for f in flows if f.get("request", {}).get("path") == "/v1/messages"]
        assert flow.get("response") is None  # really in flight
        served = fetch("/flows") + fetch(f"/flows/{flow['id']}/request/content.data") + fetch("/flows/dump")
        assert_no_secret(served)
    finally:
        call.join(timeout=15)


def test_the_real_key_reaches_an_http2_upstream(
    fake: FakeProvider, start_proxy: ProxyFactory, test_ca: Any
) -> None:
    """The providers' own APIs speak HTTP/2; mitmproxy's HTTP/2 client side must carry the real key too."""
    from tests.h2_upstream import H2Upstream

    with H2Upstream(test_ca.leaf_cert, test_ca.leaf_key) as upstream:
        proxy = start_proxy(
            config_toml=POOL_CONFIG,
            env={**ENV, "SLUICE_TEST_HOSTS": f"{fake.hosts_env()},{upstream.hosts_env()}"},
        )
        result = post_message(proxy, f"x-api-key: {ALICE_KEY}")

        assert result.status == 200, result.body
        assert json.loads(result.body)["content"][0]["text"] == "over h2"
        [received] = upstream.received
        assert received.header("x-api-key") == ANT_KEY_1
        assert received.header(":method") == "POST"
        [row] = proxy.wait_for_rows(1)
        assert (row["status"], row["output_tokens"], row["credential"]) == (200, 3, LABEL_1)
        proxy.stop()
        assert_no_secret(proxy.log_text())
