"""A hostile client tries to make sluice hand a real credential to a server of its choosing.

The attacker holds a client key (or none), and controls every byte it sends: the CONNECT target, the
absolute-form URL, Host and `:authority`, the TLS server name, Connection and Upgrade headers. Traps on
loopback stand in for the attacker's servers (tests/hostile/traps.py); each test asserts, byte for byte,
that no real key ever reaches one, and that the proxy answers the trick itself, in the provider's envelope,
with nothing sent on. The last tests show the honest path still works: the same proxy swaps keys for
requests that go where they say.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import Proxy, curl
from tests.fake_provider import FakeProvider
from tests.hostile.support import (
    ANT_KEY,
    ANTHROPIC_AUTH,
    CHAT,
    CLIENT_KEY,
    CONFIG,
    ENV,
    GW_KEY,
    MESSAGE,
    OAI_KEY,
    OPENAI_AUTH,
    REAL_KEYS,
    Answer,
    assert_fake_saw_nothing,
    assert_keys_went_only_where_they_belong,
    assert_refused,
    exchange,
    tunnel,
)
from tests.hostile.traps import Trap, Tunnel

pytestmark = pytest.mark.e2e

# The Host header names a credential host; the connection goes to the attacker.


@pytest.mark.parametrize("auth", [ANTHROPIC_AUTH, ()], ids=["client-key", "no-key"])
def test_absolute_form_to_an_attackers_server_with_the_providers_host_header(
    proxy: Proxy, fake: FakeProvider, plain_trap: Trap, auth: tuple[str, ...]
) -> None:
    before = len(plain_trap.received)
    url = f"http://127.0.0.1:{plain_trap.port}/v1/messages"
    result = curl(proxy, url, "-H", "Host: api.anthropic.com", *auth, "-d", MESSAGE)
    assert_refused(result, 421, "anthropic", "api.anthropic.com", f"127.0.0.1:{plain_trap.port}")
    assert len(plain_trap.received) == before
    assert_fake_saw_nothing(fake)


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
@pytest.mark.parametrize(
    ("host", "path", "auth", "provider"),
    [
        ("api.anthropic.com", "/v1/messages", ANTHROPIC_AUTH, "anthropic"),
        ("api.openai.com", "/v1/chat/completions", OPENAI_AUTH, "openai"),
        ("API.Anthropic.COM.", "/v1/models", ANTHROPIC_AUTH, "anthropic"),  # any path, any spelling
    ],
)
def test_a_tunnel_to_an_attackers_server_with_a_credential_host_inside(
    proxy: Proxy,
    fake: FakeProvider,
    tls_trap: Trap,
    version: str,
    host: str,
    path: str,
    auth: tuple[str, ...],
    provider: str,
) -> None:
    before = len(tls_trap.received)
    url = f"https://127.0.0.1:{tls_trap.port}{path}"
    result = curl(proxy, version, url, "-H", f"Host: {host}", *auth, "-d", MESSAGE)
    assert_refused(result, 421, provider, f"127.0.0.1:{tls_trap.port}")
    assert len(tls_trap.received) == before
    assert_fake_saw_nothing(fake)


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
@pytest.mark.parametrize(
    ("inner", "auth"),
    [
        ("api.openai.com", OPENAI_AUTH),  # the other provider's key, on Anthropic's connection
        ("attacker.example", ANTHROPIC_AUTH),
        ("attacker.example", ()),  # no client key either: the gate must not be stepped around
        ("api.anthropic.com:8443", ANTHROPIC_AUTH),
    ],
)
def test_a_tunnel_to_the_provider_with_another_host_inside(
    proxy: Proxy, fake: FakeProvider, version: str, inner: str, auth: tuple[str, ...]
) -> None:
    result = curl(proxy, version, "https://api.anthropic.com/v1/messages", "-H", f"Host: {inner}", *auth)
    assert_refused(result, 421, "anthropic", "api.anthropic.com", inner.lower())
    assert_fake_saw_nothing(fake)


# Cleartext and other ports.


@pytest.mark.parametrize(
    ("url", "auth", "provider"),
    [
        ("http://api.anthropic.com/v1/messages", ANTHROPIC_AUTH, "anthropic"),
        ("http://api.openai.com/v1/chat/completions", OPENAI_AUTH, "openai"),
        ("http://api.anthropic.com/v1/models", ANTHROPIC_AUTH, "anthropic"),
    ],
)
def test_a_credential_never_goes_out_in_cleartext(
    proxy: Proxy, fake: FakeProvider, plain_trap: Trap, url: str, auth: tuple[str, ...], provider: str
) -> None:
    before = len(plain_trap.received)
    result = curl(proxy, url, *auth, "-d", MESSAGE)
    assert_refused(result, 403, provider, "only sent over TLS")
    assert len(plain_trap.received) == before
    assert_fake_saw_nothing(fake)


@pytest.mark.parametrize(
    ("url", "auth", "provider", "port"),
    [
        ("https://api.anthropic.com:8443/v1/messages", ANTHROPIC_AUTH, "anthropic", "443"),
        ("https://gateway.sluice.test/v1/chat/completions", OPENAI_AUTH, "openai", "8443"),
    ],
)
def test_a_credential_goes_only_to_its_configured_port(
    proxy: Proxy,
    fake: FakeProvider,
    tls_trap: Trap,
    url: str,
    auth: tuple[str, ...],
    provider: str,
    port: str,
) -> None:
    before = len(tls_trap.received)
    result = curl(proxy, url, *auth, "-d", MESSAGE)
    assert_refused(result, 403, provider, f"only sent to port {port}")
    assert len(tls_trap.received) == before
    assert_fake_saw_nothing(fake)


# Tricks below what curl lets a user write: raw bytes through a CONNECT tunnel.


def raw_exchange(proxy: Proxy, connect_to: str, request: bytes, *, server_name: str) -> Answer:
    """CONNECT `connect_to`, TLS with `server_name` as SNI (trusting mitmproxy's CA), send `request`."""
    with tunnel(proxy, connect_to, server_name=server_name) as sock:
        [answer] = exchange(sock, request)
    return answer


def test_two_host_headers_are_refused(proxy: Proxy, fake: FakeProvider) -> None:
    request = (
        b"POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\nHost: attacker.example\r\n"
        + f"x-api-key: {CLIENT_KEY}\r\ncontent-type: application/json\r\n".encode()
        + f"content-length: {len(MESSAGE)}\r\nconnection: close\r\n\r\n{MESSAGE}".encode()
    )
    answer = raw_exchange(proxy, "api.anthropic.com:443", request, server_name="api.anthropic.com")
    assert_refused(answer, 421, "anthropic", "attacker.example")
    assert_fake_saw_nothing(fake)


def test_a_tls_server_name_other_than_the_tunnels_target_is_refused(proxy: Proxy, fake: FakeProvider) -> None:
    # On a shared front end (a CDN) the SNI, not the address, picks who answers; mitmproxy reuses the
    # client's SNI for its own handshake upstream.
    request = (
        b"POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\n"
        + f"x-api-key: {CLIENT_KEY}\r\ncontent-type: application/json\r\n".encode()
        + f"content-length: {len(MESSAGE)}\r\nconnection: close\r\n\r\n{MESSAGE}".encode()
    )
    answer = raw_exchange(proxy, "api.anthropic.com:443", request, server_name="gateway.sluice.test")
    assert_refused(answer, 421, "anthropic", "TLS server name is gateway.sluice.test")
    assert_fake_saw_nothing(fake)


def test_a_websocket_upgrade_to_an_attackers_server_is_refused(
    proxy: Proxy, fake: FakeProvider, tls_trap: Trap
) -> None:
    before = len(tls_trap.received)
    request = (
        b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: api.openai.com\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + f"Authorization: Bearer {CLIENT_KEY}\r\n\r\n".encode()
    )
    answer = raw_exchange(proxy, f"127.0.0.1:{tls_trap.port}", request, server_name="api.openai.com")
    assert_refused(answer, 421, "openai", "api.openai.com")
    assert len(tls_trap.received) == before
    assert_fake_saw_nothing(fake)


# Header policy: `Connection: upgrade` without an upgrade does not switch the allow-lists off.


@pytest.mark.parametrize("connection", ["keep-alive, Upgrade", "Upgrade"])
def test_a_fake_upgrade_does_not_switch_the_header_policy_off(
    proxy: Proxy, fake: FakeProvider, connection: str
) -> None:
    fake.next(added_headers=[("set-cookie", "tracking=1"), ("x-internal-debug", "secret-backend-7")])
    result = curl(
        proxy,
        "https://api.anthropic.com/v1/messages",
        *ANTHROPIC_AUTH,
        "-H",
        f"Connection: {connection}",
        "-H",
        "Cookie: session=stolen",
        "-H",
        "X-Forwarded-For: 10.9.8.7",
        "-H",
        "content-type: application/json",
        "-d",
        MESSAGE,
    )
    assert result.status == 200, result.body
    [seen] = fake.requests
    assert seen.header("cookie") is None and seen.header("x-forwarded-for") is None
    assert seen.header("x-api-key") == ANT_KEY
    assert result.header("set-cookie") is None and result.header("x-internal-debug") is None
    assert_keys_went_only_where_they_belong(fake)


def test_a_genuine_upgrade_to_the_provider_stays_filtered(proxy: Proxy, fake: FakeProvider) -> None:
    request = (
        b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: api.openai.com\r\n"
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: session=stolen\r\n"
        + f"Authorization: Bearer {CLIENT_KEY}\r\n\r\n".encode()
    )
    raw_exchange(proxy, "api.openai.com:443", request, server_name="api.openai.com")
    [seen] = fake.requests
    assert seen.header("cookie") is None
    assert seen.header("upgrade") == "websocket" and seen.header("sec-websocket-key")
    assert seen.header("authorization") == f"Bearer {OAI_KEY}"
    assert_keys_went_only_where_they_belong(fake)


# The honest path, on the same proxy.


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_requests_that_go_where_they_say_get_their_credential(
    proxy: Proxy, fake: FakeProvider, version: str
) -> None:
    fake.next(times=3)
    assert (
        curl(proxy, version, "https://api.anthropic.com/v1/messages", *ANTHROPIC_AUTH, "-d", MESSAGE).status
        == 200
    )
    assert (
        curl(proxy, version, "https://API.ANTHROPIC.COM./v1/messages", *ANTHROPIC_AUTH, "-d", MESSAGE).status
        == 200
    )
    gateway = curl(
        proxy, version, "https://gateway.sluice.test:8443/v1/chat/completions", *OPENAI_AUTH, "-d", CHAT
    )
    assert gateway.status == 200
    keys = [r.header("x-api-key") or r.header("authorization") for r in fake.requests]
    assert keys == [ANT_KEY, ANT_KEY, f"Bearer {GW_KEY}"]
    assert_keys_went_only_where_they_belong(fake)


def test_a_trailing_dot_does_not_step_around_the_gate(proxy: Proxy, fake: FakeProvider) -> None:
    result = curl(proxy, "https://api.anthropic.com./v1/messages", "-H", "x-api-key: guessed", "-d", MESSAGE)
    assert_refused(result, 401, "anthropic", "client key")
    assert_fake_saw_nothing(fake)


def test_refusals_are_recorded_where_the_request_really_went(
    proxy: Proxy, fake: FakeProvider, tls_trap: Trap
) -> None:
    marker = f"refusal-{uuid.uuid4()}"  # the module's other calls' rows may still be on their way
    curl(
        proxy,
        f"https://127.0.0.1:{tls_trap.port}/v1/messages",
        "-H",
        "Host: api.anthropic.com",
        "-H",
        f"x-claude-code-session-id: {marker}",
        *ANTHROPIC_AUTH,
        "-d",
        MESSAGE,
    )
    deadline = time.monotonic() + 10
    while (
        not (found := [r for r in proxy.rows() if r["session_id"] == marker]) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    [row] = found
    assert row["host"] == f"127.0.0.1:{tls_trap.port}"
    assert row["status"] == 421
    assert "refused: the request names api.anthropic.com" in row["rules_applied"]
    assert_fake_saw_nothing(fake)


# Reverse and upstream-proxy modes.


def test_reverse_mode_keeping_the_host_header_cannot_pick_another_credential(
    reverse_keeping_host: Proxy, fake: FakeProvider
) -> None:
    proxy = reverse_keeping_host
    for host in ("api.openai.com", f"127.0.0.1:{proxy.port}"):
        result = curl(
            proxy, f"{proxy.url}/v1/chat/completions", "-H", f"Host: {host}", *OPENAI_AUTH, "-d", CHAT
        )
        assert_refused(result, 421, "anthropic", "api.anthropic.com")
    assert_fake_saw_nothing(fake)
    fake.next()
    good = curl(
        proxy, f"{proxy.url}/v1/messages", "-H", "Host: api.anthropic.com", *ANTHROPIC_AUTH, "-d", MESSAGE
    )
    assert good.status == 200
    assert [r.header("x-api-key") for r in fake.requests] == [ANT_KEY]


def test_reverse_mode_to_another_server_never_carries_a_real_key(
    start_proxy: ProxyFactory, fake: FakeProvider, tls_trap: Trap
) -> None:
    proxy = start_proxy(config_toml=CONFIG, env=ENV, mode=f"reverse:https://127.0.0.1:{tls_trap.port}")
    before = len(tls_trap.received)
    result = curl(
        proxy, f"{proxy.url}/v1/messages", "-H", "Host: api.anthropic.com", *ANTHROPIC_AUTH, "-d", MESSAGE
    )
    # mitmproxy writes the reverse target into Host: no credential host is involved, and none is sent.
    assert result.status == 200
    assert len(tls_trap.received) > before
    assert_fake_saw_nothing(fake)


def test_upstream_proxy_mode_sends_credentials_only_inside_tls_to_the_provider(
    start_proxy: ProxyFactory, fake: FakeProvider, plain_trap: Trap, tls_trap: Trap
) -> None:
    routes = {("api.anthropic.com", 443): ("127.0.0.1", fake.port)}
    with Tunnel(routes) as tunnel:
        proxy = start_proxy(config_toml=CONFIG, env=ENV, mode=f"upstream:http://127.0.0.1:{tunnel.port}")
        fake.next()
        ok = curl(proxy, "https://api.anthropic.com/v1/messages", *ANTHROPIC_AUTH, "-d", MESSAGE)
        assert ok.status == 200, ok.body
        assert tunnel.connects == ["api.anthropic.com:443"]
        assert [r.header("x-api-key") for r in fake.requests] == [ANT_KEY]
        before = len(tunnel.received)
        clear = curl(proxy, "http://api.anthropic.com/v1/messages", *ANTHROPIC_AUTH, "-d", MESSAGE)
        assert_refused(clear, 403, "anthropic", "only sent over TLS")
        trap = curl(
            proxy,
            f"https://127.0.0.1:{tls_trap.port}/v1/messages",
            "-H",
            "Host: api.anthropic.com",
            *ANTHROPIC_AUTH,
        )
        assert_refused(trap, 421, "anthropic", "api.anthropic.com")
        assert len(tunnel.received) == before
        assert not any(tunnel.holds(key) for key in REAL_KEYS)
    assert_keys_went_only_where_they_belong(fake)


def test_nothing_in_the_database_or_log_holds_a_real_key(proxy: Proxy) -> None:
    text = Path(proxy.db_path).read_bytes() + proxy.log_text().encode()
    for key in REAL_KEYS:
        assert key.encode() not in text
