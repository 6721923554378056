"""Shared pieces of the fault suite: raw tunnels through the proxy, envelope checks, log and memory probes.

Nothing here imports pytest or starts a proxy: the fixtures are in `conftest.py` (the e2e ones, re-exported,
and the fault modules' shared proxy with a 1 s idle timeout).
"""

from __future__ import annotations

import json
import socket
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.e2e.harness import CLIENT_TIMEOUT, CurlResult, Proxy, curl

ANTHROPIC_HOST = "api.anthropic.com"
OPENAI_HOST = "api.openai.com"
CLAUDE_MODEL = "claude-sonnet-4-6"
MESSAGE: dict[str, Any] = {
    "model": CLAUDE_MODEL,
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
# mitmproxy's own error page: what a client must never get where the provider's envelope belongs.
MITMPROXY_ERROR_PAGE = b"<html>"


def assert_no_tracebacks(proxy: Proxy) -> None:
    """The proxy's log so far has no Python traceback (an addon crash shows up there, not in the client)."""
    found = proxy.tracebacks()
    assert not found, "tracebacks in the mitmdump log:\n" + "\n\n".join(found)


def is_error_envelope(provider: str, body: bytes) -> bool:
    """`body` is the provider's own JSON error envelope (docs: Anthropic errors, OpenAI error codes)."""
    try:
        obj = json.loads(body)
    except ValueError:
        return False
    if not isinstance(obj, dict) or not isinstance(obj.get("error"), dict):
        return False
    error = obj["error"]
    if provider == "anthropic":
        return obj.get("type") == "error" and isinstance(error.get("type"), str) and "message" in error
    return isinstance(error.get("message"), str) and "type" in error


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def curl_post(proxy: Proxy, url: str, body: bytes, *args: str, timeout: float = CLIENT_TIMEOUT) -> CurlResult:
    """POST raw bytes with the real curl (from a file: any bytes, any size), authenticated per provider."""
    auth = "x-api-key: sk-ant-faults" if "anthropic" in url else "authorization: Bearer sk-faults"
    with tempfile.NamedTemporaryFile(prefix="sluice-body-") as file:
        file.write(body)
        file.flush()
        return curl(
            proxy,
            url,
            "-H",
            "content-type: application/json",
            "-H",
            auth,
            "--data-binary",
            f"@{file.name}",
            *args,
            timeout=timeout,
        )


# Raw HTTP/1.1 through the proxy: for what the SDKs will not do (hang up mid-stream, send odd headers).


def open_tunnel(proxy: Proxy, host: str = ANTHROPIC_HOST, timeout: float = CLIENT_TIMEOUT) -> ssl.SSLSocket:
    """A TLS connection to `host:443` through the proxy's CONNECT, trusting the proxy's CA."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    try:
        sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            piece = sock.recv(1)  # one byte at a time: nothing past the CONNECT answer may be consumed
            if not piece:
                raise ConnectionError(f"proxy closed the CONNECT: {head!r}")
            head += piece
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"CONNECT refused: {head!r}")
        context = ssl.create_default_context(cafile=str(proxy.ca_pem))
        context.set_alpn_protocols(["http/1.1"])
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def request_bytes(
    method: str, host: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: " + host.encode()]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def read_until(conn: ssl.SSLSocket, marker: bytes, limit: int = 1 << 20) -> bytes:
    """Read until `marker` has arrived (or the peer closed, or `limit` bytes); returns what was read."""
    data = b""
    while marker not in data and len(data) < limit:
        piece = conn.recv(65536)
        if not piece:
            break
        data += piece
    return data


class _Buffered:
    def __init__(self, conn: ssl.SSLSocket) -> None:
        self.conn = conn
        self.data = b""

    def fill(self) -> None:
        piece = self.conn.recv(65536)
        if not piece:
            raise ConnectionError(f"peer closed after {len(self.data)} bytes of the message")
        self.data += piece

    def line(self) -> bytes:
        while b"\r\n" not in self.data:
            self.fill()
        line, self.data = self.data.split(b"\r\n", 1)
        return line

    def take(self, size: int) -> bytes:
        while len(self.data) < size:
            self.fill()
        taken, self.data = self.data[:size], self.data[size:]
        return taken


def read_response(conn: ssl.SSLSocket) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Read exactly one HTTP/1.1 response by its own framing (RFC 9112 §6): status, raw headers, body.

    Raises ConnectionError when the peer closes before the framing says the message is complete.
    """
    reader = _Buffered(conn)
    status_line = reader.line()
    headers: list[tuple[bytes, bytes]] = []
    while line := reader.line():
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    if any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in headers):
        body = b""
        while size := int(reader.line().split(b";")[0], 16):
            body += reader.take(size)
            if reader.take(2) != b"\r\n":
                raise ValueError("chunk not followed by CRLF")
        while reader.line():  # trailers, then the blank line
            pass
    else:
        length = next((int(v) for n, v in headers if n.lower() == b"content-length"), 0)
        body = reader.take(length)
    return int(status_line.split()[1]), headers, body


# Waiting without timed assertions: poll a condition up to a generous bound.


def wait_until(condition: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def new_rows(proxy: Proxy, since: int, n: int = 1) -> list[dict[str, Any]]:
    """Exactly `n` rows written after the first `since` (waits for them)."""
    found = proxy.wait_for_rows(n, since=since)
    assert len(found) == n, f"expected exactly {n} new rows, got {found}"
    return found
