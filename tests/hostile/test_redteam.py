"""Red team: tricks below what curl writes, against the confinement of credentials to their destination.

Two kinds of test live here, and each says which it is:

- GUARD: a trick that was tried against a real mitmdump and is blocked today. These pass; they stand
  against regressions (a mitmproxy upgrade, a refactoring of addons/confine.py or addons/wire_headers.py).
- Was a gap: a trick that got through when the red team first tried it, fixed since; the test shows the fix
  holds (a streamed request body, reverse mode keeping Host and the TLS server name, the path choosing the
  header policy, a compressed echo, HTTP/2 trailers, a withheld credential blamed for the answer).

Every test here runs with an autouse check, as in tests/hostile/test_confinement.py: no trap ever
receives a real key. Clients are built from the standard library (`ssl`, `http.client`) and
the `h2` package mitmproxy itself depends on, so that every byte on the wire is the attacker's choice.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from mitmproxy.net import encoding as codecs

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import CertAuthority, Proxy, curl, start_up_failure
from tests.fake_provider import FakeProvider
from tests.hostile.support import (
    ANT_KEY,
    ANTHROPIC_AUTH,
    CLIENT_KEY,
    CONFIG,
    ENV,
    MESSAGE,
    OAI_KEY,
    REAL_KEYS,
    TIMEOUT,
    Answer,
    Conversation,
    assert_fake_saw_nothing,
    assert_keys_went_only_where_they_belong,
    assert_refused,
    direct,
    exchange,
    hosts_env,
    post_message,
    request_bytes,
    tls_context,
    tunnel,
)
from tests.hostile.traps import LoopbackServer, Trap, Tunnel

pytestmark = pytest.mark.e2e


def h2_exchange(
    sock: socket.socket, streams: Sequence[Sequence[tuple[str, str]]], body: str = ""
) -> list[Answer]:
    """Open one HTTP/2 stream per header list on one connection (all at once) and collect the answers."""
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding="utf-8",
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    ids = []
    for headers in streams:
        stream_id = conn.get_next_available_stream_id()
        ids.append(stream_id)
        conn.send_headers(stream_id, list(headers), end_stream=not body)
        if body:
            conn.send_data(stream_id, body.encode(), end_stream=True)
    sock.sendall(conn.data_to_send())
    answers: dict[int, list[Any]] = {i: [0, [], b""] for i in ids}
    open_streams = set(ids)
    while open_streams:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                fields = [(str(k), str(v)) for k, v in event.headers]
                status = next(int(v) for k, v in fields if k == ":status")
                if status >= 200:
                    answers[event.stream_id][0] = status
                    answers[event.stream_id][1] = [(k, v) for k, v in fields if not k.startswith(":")]
            elif isinstance(event, h2.events.DataReceived):
                answers[event.stream_id][2] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                open_streams.discard(event.stream_id)
        sock.sendall(conn.data_to_send())
    return [tuple(answers[i]) for i in ids]  # type: ignore[misc]


def h2_message(
    authority: str | None, *, scheme: str = "https", path: str = "/v1/messages"
) -> list[tuple[str, str]]:
    headers = [(":method", "POST"), (":scheme", scheme), (":path", path)]
    if authority is not None:
        headers.append((":authority", authority))
    return [
        *headers,
        ("x-api-key", CLIENT_KEY),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
    ]


def keys_seen_by(fake: FakeProvider) -> list[str | None]:
    return [r.header("x-api-key") or r.header("authorization") for r in fake.requests]


# GUARD: one client connection, several requests.


def test_guard_keep_alive_in_the_providers_tunnel_cannot_switch_host_after_an_honest_call(
    proxy: Proxy, fake: FakeProvider, tls_trap: Trap
) -> None:
    fake.next()
    with tunnel(proxy, "api.anthropic.com:443", server_name="api.anthropic.com") as sock:
        answers = exchange(
            sock,
            post_message("/v1/messages", "api.anthropic.com"),
            post_message("/v1/messages", "api.openai.com", ("authorization", f"Bearer {CLIENT_KEY}")),
            post_message("/v1/messages", f"127.0.0.1:{tls_trap.port}"),
            post_message("/v1/messages", "api.anthropic.com:8443", ("connection", "close")),
        )
    assert [status for status, _, _ in answers] == [200, 421, 421, 421]
    assert keys_seen_by(fake) == [ANT_KEY]
    assert_keys_went_only_where_they_belong(fake)


def test_guard_keep_alive_in_an_attackers_tunnel_cannot_name_the_provider(
    proxy: Proxy, fake: FakeProvider, tls_trap: Trap
) -> None:
    # The trap closes its connections (and mitmproxy then the client's), so its own request goes last.
    before = len(tls_trap.received)
    with tunnel(proxy, f"127.0.0.1:{tls_trap.port}") as sock:
        first, second, third = exchange(
            sock,
            post_message("/v1/messages", "api.anthropic.com"),
            post_message("/v1/messages", "API.OPENAI.COM.", ("authorization", f"Bearer {CLIENT_KEY}")),
            # No credential host: passes. Without a body, as the trap closes without reading one (a reset).
            request_bytes(
                "GET", "/v1/models", [("Host", f"127.0.0.1:{tls_trap.port}"), ("x-api-key", CLIENT_KEY)]
            ),
        )
    assert_refused(first, 421, "anthropic", "api.anthropic.com")
    assert_refused(second, 421, "openai", "api.openai.com")
    assert third[0] == 200  # the trap's own answer, to a request that carried the client key only
    assert tls_trap.received[before:].count(b"GET /v1/models") == 1
    assert b"POST" not in tls_trap.received[before:]
    assert_fake_saw_nothing(fake)


def test_guard_pipelined_requests_are_each_confined(proxy: Proxy, fake: FakeProvider, tls_trap: Trap) -> None:
    fake.next()
    with tunnel(proxy, "api.anthropic.com:443", server_name="api.anthropic.com") as sock:
        answers = exchange(
            sock,
            post_message("/v1/messages", "api.anthropic.com"),
            post_message("/v1/messages", f"127.0.0.1:{tls_trap.port}", ("connection", "close")),
            pipelined=True,
        )
    assert [status for status, _, _ in answers] == [200, 421]
    assert keys_seen_by(fake) == [ANT_KEY]


def test_guard_h2_streams_with_other_authorities_on_the_providers_connection(
    proxy: Proxy, fake: FakeProvider, tls_trap: Trap
) -> None:
    # HTTP/2 lets a client multiplex any :authority on one connection (RFC 9113 §9.1.1, coalescing); the
    # tunnel decides where every stream goes.
    fake.next()
    with tunnel(proxy, "api.anthropic.com:443", server_name="api.anthropic.com", alpn=("h2",)) as sock:
        answers = h2_exchange(
            sock,
            [
                h2_message("api.anthropic.com"),
                h2_message("api.openai.com"),
                h2_message(f"127.0.0.1:{tls_trap.port}"),
                h2_message("API.ANTHROPIC.COM:8443"),
            ],
            MESSAGE,
        )
    assert [status for status, _, _ in answers] == [200, 421, 421, 421]
    # A `host` header other than `:authority` is a protocol error for mitmproxy's HTTP/2 server: the
    # whole connection is closed, nothing is answered and nothing sent.
    with tunnel(proxy, "api.anthropic.com:443", server_name="api.anthropic.com", alpn=("h2",)) as sock:
        [answer] = h2_exchange(
            sock, [[*h2_message("api.anthropic.com"), ("host", "attacker.example")]], MESSAGE
        )
    assert answer[0] == 0
    assert keys_seen_by(fake) == [ANT_KEY]
    assert_keys_went_only_where_they_belong(fake)


def test_guard_h2_in_an_attackers_tunnel_naming_the_provider(
    proxy: Proxy, fake: FakeProvider, tls_trap: Trap
) -> None:
    before = len(tls_trap.received)
    with tunnel(proxy, f"127.0.0.1:{tls_trap.port}", alpn=("h2",)) as sock:
        answers = h2_exchange(
            sock,
            [h2_message("api.anthropic.com"), [*h2_message(None), ("host", "api.anthropic.com")]],
            MESSAGE,
        )
    for answer in answers:
        assert_refused(answer, 421, "anthropic", "api.anthropic.com")
    assert len(tls_trap.received) == before
    assert_fake_saw_nothing(fake)


def test_guard_h2_scheme_http_inside_a_tls_tunnel_still_goes_over_tls(
    proxy: Proxy, fake: FakeProvider
) -> None:
    # mitmproxy takes the scheme of a tunnelled request from the tunnel's TLS, not from `:scheme`.
    fake.next()
    with tunnel(proxy, "api.anthropic.com:443", server_name="api.anthropic.com", alpn=("h2",)) as sock:
        [answer] = h2_exchange(sock, [h2_message("api.anthropic.com", scheme="http")], MESSAGE)
    assert answer[0] == 200, answer
    [seen] = fake.requests
    assert seen.tls and seen.sni == "api.anthropic.com" and seen.header("x-api-key") == ANT_KEY


# GUARD: what a tunnel carries, and how.


@pytest.mark.parametrize(
    ("connect_to", "host", "auth", "provider"),
    [
        ("api.anthropic.com:443", "api.anthropic.com:443", ("x-api-key", CLIENT_KEY), "anthropic"),
        ("api.openai.com:443", "api.openai.com:443", ("authorization", f"Bearer {CLIENT_KEY}"), "openai"),
        (
            "gateway.sluice.test:8443",
            "gateway.sluice.test:8443",
            ("authorization", f"Bearer {CLIENT_KEY}"),
            "openai",
        ),
    ],
)
def test_guard_cleartext_http_inside_a_connect_to_port_443_is_refused(
    proxy: Proxy, fake: FakeProvider, connect_to: str, host: str, auth: tuple[str, str], provider: str
) -> None:
    # mitmproxy speaks to the server the way the client speaks inside the tunnel: plain HTTP stays plain,
    # even to port 443. The request must be refused, not sent in the clear (nor upgraded silently).
    with tunnel(proxy, connect_to, tls=False) as sock:
        request = request_bytes(
            "POST", "/v1/messages", [("Host", host), auth, ("connection", "close")], MESSAGE
        )
        [answer] = exchange(sock, request)
    assert_refused(answer, 403, provider, "only sent over TLS")
    # Without a port, Host means port 80 for a cleartext request, which is not the tunnel's 443: 421.
    with tunnel(proxy, connect_to, tls=False) as sock:
        bare = host.rsplit(":", 1)[0] if host.endswith(":443") else host
        request = request_bytes(
            "POST", "/v1/messages", [("Host", bare), auth, ("connection", "close")], MESSAGE
        )
        [answer] = exchange(sock, request)
    assert answer[0] in (403, 421), answer
    assert_fake_saw_nothing(fake)


@pytest.mark.parametrize("inside", ["provider", "attacker"])
def test_guard_an_absolute_form_target_inside_a_tunnel(
    proxy: Proxy, fake: FakeProvider, tls_trap: Trap, inside: str
) -> None:
    trap = f"127.0.0.1:{tls_trap.port}"
    before = len(tls_trap.received)
    if inside == "provider":  # the tunnel goes to the provider, the request line names the trap
        connect_to, server_name, target, host = (
            "api.anthropic.com:443",
            "api.anthropic.com",
            f"https://{trap}/v1/messages",
            trap,
        )
    else:  # the tunnel goes to the trap, the request line names the provider
        connect_to, server_name, target, host = trap, None, "https://api.anthropic.com/v1/messages", trap
    with tunnel(proxy, connect_to, server_name=server_name) as sock:
        [answer] = exchange(sock, post_message(target, host, ("connection", "close")))
    assert_refused(answer, 421, "anthropic")
    assert len(tls_trap.received) == before
    assert_fake_saw_nothing(fake)


@pytest.mark.parametrize(
    "host",
    [
        "mallory@api.anthropic.com",  # userinfo (not allowed in Host, RFC 9110 §7.2)
        "api.anthropic.com@127.0.0.1",
        "api.anthropic.com:443@attacker.example",
        "[::1]",
        "[::ffff:127.0.0.1]:443",
        "api%2eanthropic.com",  # percent-encoding
        "api.anthropic.com%00.attacker.example",
        "xn--api-anthropic-com",
        "api.anthropic.com,attacker.example",  # a list in one header
        "api.anthropic.com attacker.example",
        "api.anthropic.com:443:443",
        "api.anthropic.com:+443",
        "api.anthropic.com:-1",
        "",
    ],
)
def test_guard_odd_host_spellings_in_the_providers_tunnel(
    proxy: Proxy, fake: FakeProvider, host: str
) -> None:
    with tunnel(proxy, "api.anthropic.com:443", server_name="api.anthropic.com") as sock:
        [answer] = exchange(sock, post_message("/v1/messages", host, ("connection", "close")))
    assert answer[0] in (400, 421), answer
    assert_fake_saw_nothing(fake)


@pytest.mark.parametrize(
    "raw_host",
    [
        b"api.anthropic.com\x00.attacker.example",  # a NUL
        b"api.anthropic.com\t",  # trailing whitespace is not part of the value (RFC 9110 §5.5)
        b" API.ANTHROPIC.COM. ",
        b"api.anthropic.com\r\n x",  # obs-fold (RFC 9112 §5.2)
    ],
)
def test_guard_control_bytes_in_host(
    proxy: Proxy, fake: FakeProvider, tls_trap: Trap, raw_host: bytes
) -> None:
    # The same bytes into the provider's tunnel (refused, or honest when the value is the provider's name)
    # and into the attacker's tunnel (never a real key: the autouse check).
    fake.next(times=2)
    statuses = []
    for connect_to, server_name in (
        ("api.anthropic.com:443", "api.anthropic.com"),
        (f"127.0.0.1:{tls_trap.port}", None),
    ):
        request = post_message("/v1/messages", "PLACEHOLDER", ("connection", "close"))
        request = request.replace(b"PLACEHOLDER", raw_host)
        with tunnel(proxy, connect_to, server_name=server_name) as sock:
            try:
                [answer] = exchange(sock, request)
            except (http.client.HTTPException, OSError):
                answer = (0, [], b"")
        statuses.append(answer[0])
    if raw_host.strip().lower().rstrip(b".") == b"api.anthropic.com":
        assert statuses[0] == 200 and keys_seen_by(fake) == [ANT_KEY]
    else:
        assert statuses[0] in (0, 400, 421), statuses
        assert_fake_saw_nothing(fake)
    assert_keys_went_only_where_they_belong(fake)


def test_guard_no_sni_in_the_providers_tunnel_still_names_the_provider_upstream(
    proxy: Proxy, fake: FakeProvider
) -> None:
    fake.next()
    with tunnel(proxy, "api.anthropic.com:443", server_name=None) as sock:
        [answer] = exchange(sock, post_message("/v1/messages", "api.anthropic.com", ("connection", "close")))
    assert answer[0] == 200, answer
    [seen] = fake.requests
    assert seen.sni == "api.anthropic.com" and seen.header("x-api-key") == ANT_KEY


@pytest.mark.parametrize("host", ["api.anthropic.com", "api.openai.com"])
def test_guard_expect_100_continue(proxy: Proxy, fake: FakeProvider, host: str) -> None:
    # mitmproxy answers 100 Continue itself after the request headers, before sluice's request hooks.
    fake.next()
    with tunnel(proxy, "api.anthropic.com:443", server_name="api.anthropic.com") as sock:
        request = post_message("/v1/messages", host, ("expect", "100-continue"), ("connection", "close"))
        head, _, body = request.partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        talk = Conversation(sock)
        assert talk.reader.readline().startswith(b"HTTP/1.1 100")
        assert talk.reader.readline() == b"\r\n"
        sock.sendall(body)
        answer = talk.read_answer()
    if host == "api.anthropic.com":
        assert answer[0] == 200 and keys_seen_by(fake) == [ANT_KEY]
    else:
        assert_refused(answer, 421, "anthropic", "api.openai.com")
        assert_fake_saw_nothing(fake)


def test_guard_content_length_and_chunked_together_are_refused(
    proxy: Proxy, fake: FakeProvider, tls_trap: Trap
) -> None:
    # The classic CL.TE smuggling shape: a second request, to another host, hidden in the first's body.
    smuggled = post_message("/v1/messages", f"127.0.0.1:{tls_trap.port}")
    body = b"0\r\n\r\n" + smuggled
    request = request_bytes(
        "POST",
        "/v1/messages",
        [
            ("Host", "api.anthropic.com"),
            ("x-api-key", CLIENT_KEY),
            ("content-length", str(len(body))),
            ("transfer-encoding", "chunked"),
        ],
        body,
    )
    with tunnel(proxy, "api.anthropic.com:443", server_name="api.anthropic.com") as sock:
        [answer] = exchange(sock, request)
    assert answer[0] == 400, answer
    assert_fake_saw_nothing(fake)


# GUARD: absolute form on the proxy's own port, regular and upstream modes.


def test_guard_absolute_form_https_without_connect(proxy: Proxy, fake: FakeProvider, tls_trap: Trap) -> None:
    # A client may send `POST https://...` in the clear to the proxy; mitmproxy opens TLS upstream itself.
    # The client leg carries only the client key; the credential travels inside TLS to the provider.
    fake.next()
    with direct(proxy) as sock:
        answers = exchange(
            sock,
            post_message("https://api.anthropic.com/v1/messages", "api.anthropic.com"),
            post_message("https://api.anthropic.com/v1/messages", f"127.0.0.1:{tls_trap.port}"),
            post_message(f"https://127.0.0.1:{tls_trap.port}/v1/messages", "api.anthropic.com"),
            post_message(
                "https://api.anthropic.com@127.0.0.1:1/v1/messages",
                "api.anthropic.com",
                ("connection", "close"),
            ),
        )
    # The last one carries userinfo in its target, which mitmproxy does not parse (400).
    assert [status for status, _, _ in answers] == [200, 421, 421, 400]
    [seen] = fake.requests
    assert seen.tls and seen.sni == "api.anthropic.com" and seen.header("x-api-key") == ANT_KEY


def test_guard_upstream_mode_absolute_form_https_goes_through_a_connect(
    start_proxy: ProxyFactory, fake: FakeProvider
) -> None:
    routes = {("api.anthropic.com", 443): ("127.0.0.1", fake.port)}
    with Tunnel(routes) as upstream:
        proxy = start_proxy(config_toml=CONFIG, env=ENV, mode=f"upstream:http://127.0.0.1:{upstream.port}")
        fake.next()
        with direct(proxy) as sock:
            [answer] = exchange(
                sock,
                post_message(
                    "https://api.anthropic.com/v1/messages", "api.anthropic.com", ("connection", "close")
                ),
            )
        assert answer[0] == 200, answer
        assert upstream.connects == ["api.anthropic.com:443"]
        assert not any(upstream.holds(key) for key in REAL_KEYS)
    assert keys_seen_by(fake) == [ANT_KEY]
    assert_keys_went_only_where_they_belong(fake)


def test_guard_reverse_mode_with_an_absolute_form_target(
    start_proxy: ProxyFactory, fake: FakeProvider, tls_trap: Trap
) -> None:
    proxy = start_proxy(config_toml=CONFIG, env=ENV, mode="reverse:https://api.anthropic.com")
    before = len(tls_trap.received)
    with direct(proxy) as sock:
        [answer] = exchange(
            sock,
            post_message(
                f"https://127.0.0.1:{tls_trap.port}/v1/messages", "api.anthropic.com", ("connection", "close")
            ),
        )
    assert_refused(answer, 421, "anthropic", f"127.0.0.1:{tls_trap.port}")
    assert len(tls_trap.received) == before
    assert_fake_saw_nothing(fake)


# GUARD: calls that are not metered, on a credential host.


def test_guard_unmetered_paths_meet_the_gate_and_the_header_policy(proxy: Proxy, fake: FakeProvider) -> None:
    refused = curl(proxy, "https://api.anthropic.com/v1/models", "-H", "x-api-key: guessed")
    assert_refused(refused, 401, "anthropic", "client key")
    assert_fake_saw_nothing(fake)
    fake.next(status=200, body={"data": []})
    allowed = curl(
        proxy,
        "https://api.anthropic.com/v1/models",
        *ANTHROPIC_AUTH,
        "-H",
        "Cookie: session=stolen",
        "-H",
        "X-Forwarded-For: 10.1.2.3",
    )
    assert allowed.status == 200, allowed.body
    [seen] = fake.requests
    assert seen.header("x-api-key") == ANT_KEY
    assert seen.header("cookie") is None and seen.header("x-forwarded-for") is None


def test_guard_count_tokens_to_an_attackers_server(proxy: Proxy, fake: FakeProvider, tls_trap: Trap) -> None:
    before = len(tls_trap.received)
    result = curl(
        proxy,
        f"https://127.0.0.1:{tls_trap.port}/v1/messages/count_tokens",
        "-H",
        "Host: api.anthropic.com",
        *ANTHROPIC_AUTH,
        "-d",
        MESSAGE,
    )
    assert_refused(result, 421, "anthropic")
    assert len(tls_trap.received) == before
    assert_fake_saw_nothing(fake)


# `stream_large_bodies` would send a request upstream before sluice's request hooks run: refused at start.


def test_streamed_request_bodies_and_credential_swap_do_not_start_together(
    start_proxy: ProxyFactory, fake: FakeProvider, tmp_path: Any
) -> None:
    # mitmproxy writes a streamed request's headers upstream right after `requestheaders`
    # (HttpStream.start_request_stream), or starts streaming in the middle of the body, and the request
    # hooks (confinement, gate, header policy, budget, credentials) only run once the body has gone.
    log = start_up_failure(
        start_proxy,
        tmp_path / "streaming",
        config_toml=CONFIG,
        env=ENV,
        extra_args=["--set", "stream_large_bodies=1k"],
    )
    assert "stream_large_bodies: sluice cannot check a streamed request before it leaves" in log
    assert_fake_saw_nothing(fake)


# Was a gap: reverse mode keeping the Host header let the client choose the upstream TLS server name.


def test_reverse_mode_keeping_host_refuses_another_tls_server_name(
    reverse_keeping_host: Proxy, fake: FakeProvider
) -> None:
    reverse = reverse_keeping_host
    fake.next()
    raw = socket.create_connection(("127.0.0.1", reverse.port), timeout=TIMEOUT)
    with tls_context(reverse).wrap_socket(raw, server_hostname="gateway.sluice.test") as sock:
        [answer] = exchange(sock, post_message("/v1/messages", "api.anthropic.com", ("connection", "close")))
    assert all(r.header("x-api-key") != ANT_KEY for r in fake.requests)  # withheld at the wire: no leak
    seen = [(r.sni, r.header("x-api-key")) for r in fake.requests]
    assert answer[0] == 421 and seen == [], (answer[0], seen)


# Was a gap: the header policy followed the path, not where the request goes.


def test_the_destination_not_the_path_picks_the_header_policy(proxy: Proxy, fake: FakeProvider) -> None:
    fake.next()
    result = curl(
        proxy,
        "https://api.openai.com/v1/messages",
        "-H",
        f"authorization: Bearer {CLIENT_KEY}",
        "-H",
        "anthropic-beta: attacker-chosen",
        "-H",
        "x-claude-code-session-id: tracking-id",
        "-d",
        MESSAGE,
    )
    assert result.status == 200, result.body
    [seen] = fake.requests
    assert seen.header("authorization") == f"Bearer {OAI_KEY}"
    assert (seen.header("anthropic-beta"), seen.header("x-claude-code-session-id")) == (None, None)


# Was a gap: an echo in a compressed body was not scrubbed.


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
def test_an_echo_in_a_compressed_error_body_is_scrubbed(
    start_proxy: ProxyFactory, fake: FakeProvider, encoding: str
) -> None:
    own = start_proxy(
        config_toml=CONFIG, env=ENV
    )  # its own pool: a 401 here must not disable other tests' key
    echo = {"type": "error", "error": {"type": "invalid_request_error", "message": f"bad key {ANT_KEY}"}}
    fake.next(status=400, body=echo, encoding=encoding)
    result = curl(
        own,
        "https://api.anthropic.com/v1/messages",
        *ANTHROPIC_AUTH,
        "-H",
        f"accept-encoding: {encoding}",
        "-d",
        MESSAGE,
    )
    assert result.status == 400
    [row] = own.wait_for_rows(1)
    own.stop()
    assert ANT_KEY not in json.dumps(row)
    assert ANT_KEY.encode() not in result.body  # still encoded: decoded below
    assert ANT_KEY.encode() not in codecs.decode(result.body, encoding)


# Was a gap: HTTP/2 request trailers were not headers to the allow-list.


class H2Provider(LoopbackServer):
    """A TLS HTTP/2-only stand-in for the provider (the real APIs speak HTTP/2): keeps each stream's header
    and trailer fields, answers 200 with a small JSON body."""

    def __init__(self, certfile: Any, keyfile: Any) -> None:
        super().__init__()
        self.streams: dict[int, dict[str, list[tuple[str, str]]]] = {}
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(certfile), str(keyfile))
        self._context.set_alpn_protocols(["h2"])

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(TIMEOUT)
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        with contextlib.suppress(OSError), self._context.wrap_socket(raw, server_side=True) as sock:
            conn = h2.connection.H2Connection(config=config)
            conn.initiate_connection()
            sock.sendall(conn.data_to_send())
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        fields = [(str(k), str(v)) for k, v in event.headers]
                        self.streams[event.stream_id] = {"headers": fields, "trailers": []}
                    elif isinstance(event, h2.events.TrailersReceived):
                        fields = [(str(k), str(v)) for k, v in event.headers]
                        self.streams[event.stream_id]["trailers"] = fields
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        body = b"{}"
                        conn.send_headers(
                            event.stream_id,
                            [
                                (":status", "200"),
                                ("content-type", "application/json"),
                                ("content-length", "2"),
                            ],
                        )
                        conn.send_data(event.stream_id, body, end_stream=True)
                sock.sendall(conn.data_to_send())


def test_h2_request_trailers_do_not_step_around_the_header_policy(
    start_proxy: ProxyFactory, test_ca: CertAuthority
) -> None:
    with H2Provider(test_ca.leaf_cert, test_ca.leaf_key) as provider:
        own = start_proxy(
            config_toml=CONFIG,
            env={**ENV, "SLUICE_TEST_HOSTS": f"api.anthropic.com=127.0.0.1:{provider.port}"},
        )
        with tunnel(own, "api.anthropic.com:443", server_name="api.anthropic.com", alpn=("h2",)) as sock:
            config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
            conn = h2.connection.H2Connection(config=config)
            conn.initiate_connection()
            conn.send_headers(1, [*h2_message("api.anthropic.com"), ("te", "trailers")])
            conn.send_data(1, MESSAGE.encode())
            conn.send_headers(
                1, [("cookie", "session=stolen"), ("x-forwarded-for", "10.9.8.7")], end_stream=True
            )
            sock.sendall(conn.data_to_send())
            ended = False
            while not ended and (data := sock.recv(65536)):
                ended = any(isinstance(e, h2.events.StreamEnded) for e in conn.receive_data(data))
                sock.sendall(conn.data_to_send())
        [seen] = provider.streams.values()
        assert ("x-api-key", ANT_KEY) in seen["headers"]  # the honest part: the credential went, over h2
        names = {name for name, _ in seen["headers"] + seen["trailers"]}
        assert not names & {"cookie", "x-forwarded-for"}, seen["trailers"]


def test_a_request_with_another_tls_server_name_does_not_cost_the_credential(
    reverse_keeping_host: Proxy, fake: FakeProvider
) -> None:
    reverse = reverse_keeping_host
    fake.accepted_credentials = {ANT_KEY}
    fake.next(times=2)
    raw = socket.create_connection(("127.0.0.1", reverse.port), timeout=TIMEOUT)
    with tls_context(reverse).wrap_socket(raw, server_hostname="gateway.sluice.test") as sock:
        exchange(sock, post_message("/v1/messages", "api.anthropic.com", ("connection", "close")))
    raw = socket.create_connection(("127.0.0.1", reverse.port), timeout=TIMEOUT)
    with tls_context(reverse).wrap_socket(raw, server_hostname="api.anthropic.com") as sock:
        [honest] = exchange(sock, post_message("/v1/messages", "api.anthropic.com", ("connection", "close")))
    assert honest[0] == 200, honest


# GUARD: the OAuth credential (Authorization: Bearer) and SOCKS5 mode follow the same destination rules.

OAUTH_ACCESS = "sk-ant-oat01-REAL-HOSTILE-SUITE-ACCESS-4d2b9e"
OAUTH_REFRESH = "sk-ant-ort01-REAL-HOSTILE-SUITE-REFRESH-7a1c3f"


def test_guard_the_oauth_token_goes_only_to_its_host(
    start_proxy: ProxyFactory, fake: FakeProvider, plain_trap: Trap, tls_trap: Trap, tmp_path: Any
) -> None:
    credentials = tmp_path / "credentials.json"
    credentials.write_text(
        json.dumps(
            {
                "claudeAiOauth": {
                    "accessToken": OAUTH_ACCESS,
                    "refreshToken": OAUTH_REFRESH,
                    "expiresAt": 4_102_444_800_000,  # 2100: no refresh during the test
                    "scopes": ["user:inference"],
                }
            }
        )
    )
    config = f"""
[[clients]]
name = "mallory"
key = "env:SLUICE_HOSTILE_CLIENT"

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
oauth = {{ credentials = "file:{credentials}" }}
"""
    env = {**ENV, "SLUICE_TEST_HOSTS": hosts_env(fake, plain_trap, tls_trap)}
    own = start_proxy(config_toml=config, env=env)
    bearer = ("-H", f"authorization: Bearer {CLIENT_KEY}", "-H", "anthropic-version: 2023-06-01")
    before = len(tls_trap.received)
    for url, host in (
        (f"https://127.0.0.1:{tls_trap.port}/v1/messages", "api.anthropic.com"),
        ("https://api.anthropic.com/v1/messages", "attacker.example"),
        ("https://api.anthropic.com:8443/v1/messages", "api.anthropic.com:8443"),
        ("http://api.anthropic.com/v1/messages", "api.anthropic.com"),
    ):
        refused = curl(own, url, "-H", f"Host: {host}", *bearer, "-d", MESSAGE)
        assert refused.status in (403, 421), (url, refused.status, refused.body)
    assert len(tls_trap.received) == before
    assert_fake_saw_nothing(fake)
    fake.next()
    honest = curl(own, "https://api.anthropic.com/v1/messages", *bearer, "-d", MESSAGE)
    assert honest.status == 200, honest.body
    [seen] = fake.requests
    assert seen.tls and seen.sni == "api.anthropic.com"
    assert seen.header("authorization") == f"Bearer {OAUTH_ACCESS}" and seen.header("x-api-key") is None
    for trap in (plain_trap, tls_trap):
        assert not trap.holds(OAUTH_ACCESS) and not trap.holds(OAUTH_REFRESH)


@contextlib.contextmanager
def socks5(proxy: Proxy, host: str, port: int, *, server_name: str | None) -> Iterator[socket.socket]:
    """A SOCKS5 CONNECT (RFC 1928, no authentication, a domain name) through the proxy, then TLS."""
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
    with contextlib.closing(raw):
        raw.sendall(b"\x05\x01\x00")
        assert raw.recv(2) == b"\x05\x00"
        name = host.encode()
        raw.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
        reply = raw.recv(10)
        assert reply[:2] == b"\x05\x00", reply
        with tls_context(proxy).wrap_socket(raw, server_hostname=server_name) as secure:
            yield secure


def test_guard_socks5_mode(
    start_proxy: ProxyFactory, fake: FakeProvider, plain_trap: Trap, tls_trap: Trap
) -> None:
    env = {**ENV, "SLUICE_TEST_HOSTS": hosts_env(fake, plain_trap, tls_trap)}
    own = start_proxy(config_toml=CONFIG, env=env, mode="socks5")
    before = len(tls_trap.received)
    with socks5(own, "127.0.0.1", tls_trap.port, server_name=None) as sock:
        [to_trap] = exchange(sock, post_message("/v1/messages", "api.anthropic.com", ("connection", "close")))
    assert_refused(to_trap, 421, "anthropic", "api.anthropic.com")
    with socks5(own, "api.anthropic.com", 443, server_name="gateway.sluice.test") as sock:
        [other_sni] = exchange(
            sock, post_message("/v1/messages", "api.anthropic.com", ("connection", "close"))
        )
    assert_refused(other_sni, 421, "anthropic", "gateway.sluice.test")
    assert len(tls_trap.received) == before
    assert_fake_saw_nothing(fake)
    fake.next()
    with socks5(own, "api.anthropic.com", 443, server_name="api.anthropic.com") as sock:
        [honest] = exchange(sock, post_message("/v1/messages", "api.anthropic.com", ("connection", "close")))
    assert honest[0] == 200, honest
    assert keys_seen_by(fake) == [ANT_KEY]
    assert_keys_went_only_where_they_belong(fake)
