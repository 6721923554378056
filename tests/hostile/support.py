"""What the hostile suite's attacks share: the keys at stake, the proxy's config, and the checks.

The config holds three credential hosts (Anthropic, OpenAI, and a gateway on port 8443); the traps of
tests/hostile/traps.py stand where those hosts' wrong ports resolve (`hosts_env`). Raw clients write
exactly the bytes they are given (`tunnel`, `direct`, `exchange`), for tricks below what curl lets a user
write. The fixtures built on these live in tests/hostile/conftest.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
from collections.abc import Iterator, Sequence
from typing import Any

from tests.e2e.harness import Proxy
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


Answer = tuple[int, list[tuple[str, str]], bytes]
TIMEOUT = 10.0


# Clients that write exactly what they are given.


def request_bytes(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes | str = b"",
) -> bytes:
    """One HTTP/1.1 request, written as given (no header is added but Content-Length for a body)."""
    data = body.encode() if isinstance(body, str) else body
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    if data and not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in headers):
        lines.append(f"content-length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


def post_message(target: str, host: str | None, *extra: tuple[str, str]) -> bytes:
    headers = [("Host", host)] if host is not None else []
    headers += [("x-api-key", CLIENT_KEY), ("anthropic-version", "2023-06-01")]
    headers += [("content-type", "application/json"), *extra]
    return request_bytes("POST", target, headers, MESSAGE)


def tls_context(proxy: Proxy, alpn: Sequence[str] = ("http/1.1",)) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(proxy.ca_pem))
    context.check_hostname = False
    context.set_alpn_protocols(list(alpn))
    return context


@contextlib.contextmanager
def tunnel(
    proxy: Proxy,
    connect_to: str,
    *,
    tls: bool = True,
    server_name: str | None = None,
    alpn: Sequence[str] = ("http/1.1",),
) -> Iterator[socket.socket]:
    """CONNECT `connect_to` through the proxy; then TLS with `server_name` as SNI (None: no SNI), or not."""
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
    with contextlib.closing(raw):
        raw.sendall(f"CONNECT {connect_to} HTTP/1.1\r\nHost: {connect_to}\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = raw.recv(1)
            assert chunk, reply
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply
        if not tls:
            yield raw
            return
        with tls_context(proxy, alpn).wrap_socket(raw, server_hostname=server_name) as secure:
            yield secure


@contextlib.contextmanager
def direct(proxy: Proxy) -> Iterator[socket.socket]:
    """A plain connection to the proxy's port, for requests in absolute form (or to a reverse proxy)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as raw:
        yield raw


class _Unclosable:
    """One buffered reader shared by every response of a keep-alive connection (http.client closes its
    file when a response is done)."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def close(self) -> None:
        pass


class Conversation:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = _Unclosable(sock.makefile("rb"))

    def makefile(self, *_args: Any, **_kwargs: Any) -> Any:
        return self.reader

    def read_answer(self, method: str = "POST") -> Answer:
        response = http.client.HTTPResponse(self, method=method)  # type: ignore[arg-type]
        response.begin()  # reads past any 100 Continue
        body = response.read()
        return response.status, list(response.getheaders()), body


def exchange(sock: socket.socket, *requests: bytes, pipelined: bool = False) -> list[Answer]:
    """Send each request and read its answer on one connection (keep-alive); `pipelined`: all at once."""
    talk = Conversation(sock)
    if pipelined:
        sock.sendall(b"".join(requests))
        return [talk.read_answer() for _ in requests]
    answers = []
    for request in requests:
        sock.sendall(request)
        answers.append(talk.read_answer(request.split(b" ", 1)[0].decode()))
    return answers
