"""The load generator's HTTP client: what Claude Code does behind HTTPS_PROXY, and nothing more.

CONNECT api.anthropic.com:443 through the proxy, TLS with the proxy's certificate for that name, then
HTTP/1.1 keep-alive requests on the tunnel. Written on asyncio streams rather than an HTTP library so the
client spends as little CPU as possible beside the proxy under test, and so a streamed body can be timed
chunk by chunk as it comes off the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from bench.processes import BenchError, Proxy
from bench.settings import PROVIDER_HOST

REQUEST_TIMEOUT_S = 60.0
READ_LIMIT = 1024 * 1024
MAX_CHUNKS = 100_000_000  # a response of more chunks than this is a bug, not a benchmark


def request_head(path: str, headers: Sequence[tuple[str, str]], length: int) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"POST {path} HTTP/1.1\r\n{lines}content-length: {length}\r\n\r\n".encode("latin-1")


def base_url_head(head: bytes, base_path: str, authority: str) -> bytes:
    """A request head for api.anthropic.com as an SDK sends it to a base-URL proxy instead: the target
    under `base_path`, the proxy's own authority in `host`. Every other byte stays."""
    method, target, rest = head.split(b" ", 2)
    if not target.startswith(b"/"):
        raise BenchError(f"not an origin-form request target: {target[:100]!r}")
    host = b"\r\nhost: %s\r\n" % PROVIDER_HOST.encode()
    if host not in rest:
        raise BenchError(f"the request head names no host {PROVIDER_HOST}: {head[:200]!r}")
    rest = rest.replace(host, b"\r\nhost: %s\r\n" % authority.encode(), 1)
    return b"%s %s%s %s" % (method, base_path.encode(), target, rest)


class Connection:
    def __init__(self, proxy: Proxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, proxy: Proxy, host: str = PROVIDER_HOST) -> Connection:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=READ_LIMIT)
            if proxy.base_path:  # a base-URL proxy: requests go to it, in plain HTTP
                return cls(proxy, reader, writer)
            writer.write(f"CONNECT {host}:443 HTTP/1.1\r\nhost: {host}:443\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                writer.close()
                raise BenchError(f"{proxy.name}: CONNECT refused: {head[:200]!r}")
            await writer.start_tls(proxy.client_tls, server_hostname=host)
        return cls(proxy, reader, writer)

    async def send(self, head: bytes, body: bytes) -> None:
        if self.proxy.base_path:
            head = base_url_head(head, self.proxy.base_path, f"127.0.0.1:{self.proxy.port}")
        self.writer.write(head + body)
        await self.writer.drain()

    async def read_head(self) -> dict[str, str]:
        """The response's headers (lower-cased names); raises BenchError for anything but 200."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if status_line.split(" ")[1] != "200":
            body = b""
            with contextlib.suppress(Exception):
                body = b"".join([chunk async for chunk in self.chunks(headers)])
            raise BenchError(f"{self.proxy.name}: the call failed: {status_line}: {body[:300]!r}")
        return headers

    async def chunks(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The body as it arrives: HTTP/1.1 chunks (RFC 9112 §7.1), or one piece for a Content-Length."""
        if "content-length" in headers:
            yield await self.reader.readexactly(int(headers["content-length"]))
            return
        if "chunked" not in headers.get("transfer-encoding", ""):
            raise BenchError(f"{self.proxy.name}: a response without framing: {headers}")
        for _ in range(MAX_CHUNKS):
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers
                return
            data = await self.reader.readexactly(size + 2)
            yield data[:-2]
        raise BenchError(f"{self.proxy.name}: a response of more than {MAX_CHUNKS} chunks")

    async def call(self, head: bytes, body: bytes) -> bytes:
        """One request and its whole response body."""
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            await self.send(head, body)
            headers = await self.read_head()
            return b"".join([chunk async for chunk in self.chunks(headers)])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def connections(
    proxy: Proxy, count: int, host: str = PROVIDER_HOST, batch: int | None = None
) -> AsyncIterator[list[Connection]]:
    """`count` connections through `proxy` to `host`, opened `batch` at a time (all at once by default): a
    thousand TLS handshakes at once would time out on the handshakes, not measure the proxy."""
    step = batch or max(1, count)
    opened: list[Connection | BaseException] = []
    for first in range(0, count, step):
        size = min(step, count - first)
        opened += await asyncio.gather(
            *(Connection.open(proxy, host) for _ in range(size)), return_exceptions=True
        )
    good = [conn for conn in opened if isinstance(conn, Connection)]
    try:
        for failure in opened:
            if isinstance(failure, BaseException):
                raise failure
        yield good
    finally:
        await asyncio.gather(*(conn.close() for conn in good))
