"""Servers an attacker would point sluice at, on loopback: they keep every byte they receive.

A `Trap` listens on 127.0.0.1 (plain TCP, or TLS with the test CA's leaf certificate, which mitmdump trusts
upstream, as a real attacker's host would have a valid certificate of its own). It reads each request
whole, answers it with a small 200 so that a client and mitmproxy finish normally, and keeps every byte:
tests assert, byte for byte, that no real credential is in `received`.

`Tunnel` is an upstream HTTP proxy for `--mode upstream:`: it honours CONNECT by opening a TCP tunnel to the
address it is given (mapped through `routes`, since this process does not resolve the test host names),
and keeps the bytes it saw in the clear (the CONNECT lines, any absolute-form request) in `received`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path
from typing import Self

import h11

ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
)


class LoopbackServer:
    """A listener on 127.0.0.1 (or `host`, an address of a namespace the test made, `port` 0 for any) that
    serves each connection on a thread of its own (`_serve`), and keeps what it saw in `received`. Use as a
    context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.received = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, port))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()

    def holds(self, secret: str) -> bool:
        with self._lock:
            return secret.encode() in self.received

    def _keep(self, data: bytes) -> None:
        with self._lock:
            self.received += data

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError


class Trap(LoopbackServer):
    def __init__(
        self,
        *,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host, port)
        self.connections = 0
        self._context: ssl.SSLContext | None = None
        if certfile is not None:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(str(certfile), str(keyfile))
            self._context.set_alpn_protocols(["http/1.1"])

    @property
    def tls(self) -> bool:
        return self._context is not None

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        conn.settimeout(10)
        with contextlib.suppress(OSError), conn:
            if self._context is not None:
                conn = self._context.wrap_socket(conn, server_side=True)
            # The whole request is read before the answer: closing on unread bytes would reset the
            # connection under the proxy's feet (a 502 instead of the answer, depending on timing).
            parser = h11.Connection(h11.SERVER)
            while chunk := conn.recv(65536):
                self._keep(chunk)
                parser.receive_data(chunk)
                if _request_complete(parser):
                    conn.sendall(ANSWER)
                    return


def _request_complete(parser: h11.Connection) -> bool:
    """Whether the data fed to `parser` so far holds a whole request (or one it cannot read further)."""
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError:
            return True
        if event is h11.NEED_DATA:
            return False
        if isinstance(event, h11.EndOfMessage):
            return True


class Tunnel(LoopbackServer):
    """A CONNECT proxy that keeps what it can read: everything but the TLS inside its tunnels."""

    def __init__(self, routes: dict[tuple[str, int], tuple[str, int]]) -> None:
        super().__init__()
        self.routes = routes
        self.connects: list[str] = []

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(10)
        with contextlib.suppress(OSError), client:
            head = bytearray()
            while b"\r\n\r\n" not in head and (chunk := client.recv(65536)):
                head += chunk
            self._keep(bytes(head))
            line = bytes(head).split(b"\r\n", 1)[0].decode("latin-1")
            method, _, rest = line.partition(" ")
            if method != "CONNECT":
                client.sendall(ANSWER)  # an absolute-form request in the clear: kept above, answered here
                return
            authority = rest.split(" ", 1)[0]
            with self._lock:
                self.connects.append(authority)
            host, _, port = authority.rpartition(":")
            target = self.routes.get((host.strip("[]").lower(), int(port)), (host, int(port)))
            with socket.create_connection(target, timeout=10) as server:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                after = bytes(head).split(b"\r\n\r\n", 1)[1]
                if after:
                    server.sendall(after)
                _pipe_both_ways(client, server)


def _pipe_both_ways(a: socket.socket, b: socket.socket) -> None:
    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    other = threading.Thread(target=pump, args=(b, a), daemon=True)
    other.start()
    pump(a, b)
    other.join(10)
