"""The benchmark's upstream: a fake Anthropic Messages API made for timing a proxy, in a process of its own.

tests/fake_provider.py is the fake the test suite scripts request by request. A benchmark needs three things
it does not do, so this one is separate (and borrows its header helpers, so responses look the same):

- paced streams keep an absolute schedule (event i leaves at start + i x interval, so sleep overshoot never
  accumulates) and every text delta carries the `time.monotonic_ns()` at which it was written. Linux's
  CLOCK_MONOTONIC is one clock for every process, so the client subtracts it from its own receive time and
  gets each event's one-way latency through the proxy;
- a bulk stream of any size is generated while it is sent, never held in memory;
- one asyncio loop serves every connection, so at 16-20 connections the fake costs little CPU beside the
  proxy under test.

The scenario comes in the query string (Claude Code sends `?beta=true` there too, so sluice passes queries
through): `bench=json` (default; a Messages response), `bench=paced&events=N&interval_us=U`,
`bench=bulk&bytes=N`, and `bench=bomb&kind=json|sse`: a gzip bomb (bench/bombs.py) inflating to
`--bomb-bytes`, built once at start, sent whatever the request's Accept-Encoding says (a hostile upstream).
Run as `python -m bench.upstream --cert C --key K`; it prints `port N` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import formatdate
from urllib.parse import parse_qs, urlsplit

from bench.bombs import response_bomb, stream_bomb
from rules.providers.bedrock.eventstream import event_frame
from tests.fake_bedrock import converse_usage
from tests.fake_provider import Usage, anthropic_ratelimit_headers

MAX_HEAD_BYTES = 256 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_EVENTS = 1_000_000
MAX_BULK_BYTES = 4 * 1024 * 1024 * 1024
BULK_RECORD_TEXT = 4096  # characters of text per delta in a bulk stream
BULK_RECORDS_PER_WRITE = 16
BOMB_CHUNK = 16 * 1024  # bytes of a streamed bomb per HTTP chunk
_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
USAGE = Usage(input_tokens=1_234, cache_read_tokens=20_000, cache_write_5m_tokens=800, output_tokens=256)

# What Anthropic's edge adds besides its own headers; sluice's response allow-list drops these.
_EDGE_HEADERS = (
    ("cf-cache-status", "DYNAMIC"),
    ("cf-ray", "8f0000000000bench-SJC"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
    ("via", "1.1 google"),
    ("x-robots-tag", "none"),
    ("x-envoy-upstream-service-time", "412"),
)


def _sse(kind: str, payload: dict[str, object]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload}, separators=(',', ':'))}\n\n".encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Upstream:
    def __init__(self, bomb_bytes: int = 0) -> None:
        self.served = 0
        self.bombs = {"json": response_bomb(bomb_bytes), "sse": stream_bomb(bomb_bytes)} if bomb_bytes else {}

    def _headers(self, content_type: str) -> list[tuple[str, str]]:
        self.served += 1
        return [
            ("date", formatdate(usegmt=True)),
            ("content-type", content_type),
            ("request-id", "req_011C" + secrets.token_hex(11)),
            ("anthropic-organization-id", "00000000-0000-4000-8000-00000000f4ce"),
            *anthropic_ratelimit_headers(self.served, datetime.now(UTC)),
            *_EDGE_HEADERS,
            ("server", "cloudflare"),
        ]

    @staticmethod
    def _head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
        return f"HTTP/1.1 {status} OK\r\n{lines}\r\n".encode("latin-1")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                request_line, *lines = head.decode("latin-1").split("\r\n")
                target = request_line.split(" ")[1]
                length = 0
                for line in lines:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if length > MAX_BODY_BYTES:
                    return
                body = await reader.readexactly(length) if length else b""
                query = parse_qs(urlsplit(target).query)
                match = _MODEL.search(body, 0, 4096)
                model = match.group(1).decode() if match else "claude-sonnet-4-5"
                scenario = query.get("bench", ["json"])[0]
                if scenario == "paced":
                    events = min(int(query.get("events", ["100"])[0]), MAX_EVENTS)
                    interval = int(query.get("interval_us", ["10000"])[0]) / 1e6
                    if urlsplit(target).path.startswith("/model/"):  # Bedrock's ConverseStream
                        await self._paced_frames(writer, events, interval)
                    else:
                        await self._paced(writer, model, events, interval)
                elif scenario == "bulk":
                    await self._bulk(writer, model, min(int(query.get("bytes", ["0"])[0]), MAX_BULK_BYTES))
                elif scenario == "bomb":
                    await self._bomb(writer, query.get("kind", ["json"])[0])
                else:
                    await self._json(writer, model)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _json(self, writer: asyncio.StreamWriter, model: str) -> None:
        body = json.dumps(
            {
                "id": "msg_01" + secrets.token_hex(11),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": "Done. The tests pass now."}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": USAGE.anthropic(),
            },
            separators=(",", ":"),
        ).encode()
        headers = [*self._headers("application/json"), ("content-length", str(len(body)))]
        writer.write(self._head(200, headers) + body)
        await writer.drain()

    def _start(self, writer: asyncio.StreamWriter, model: str) -> None:
        headers = [
            *self._headers("text/event-stream; charset=utf-8"),
            ("cache-control", "no-cache"),
            ("transfer-encoding", "chunked"),
        ]
        message = {
            "id": "msg_01" + secrets.token_hex(11),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": USAGE.anthropic(output_tokens=1),
        }
        opening = _sse("message_start", {"message": message}) + _sse("ping", {})
        opening += _sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        writer.write(self._head(200, headers) + _chunk(opening))

    @staticmethod
    def _end(writer: asyncio.StreamWriter) -> None:
        closing = _sse("content_block_stop", {"index": 0})
        closing += _sse(
            "message_delta",
            {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": USAGE.anthropic()},
        )
        closing += _sse("message_stop", {})
        writer.write(_chunk(closing) + b"0\r\n\r\n")

    async def _paced(self, writer: asyncio.StreamWriter, model: str, events: int, interval: float) -> None:
        loop = asyncio.get_running_loop()
        self._start(writer, model)
        await writer.drain()
        start = loop.time()
        for index in range(events):
            delay = start + (index + 1) * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            # The text is the send time: the client's receive time minus it is this event's latency.
            delta = {"index": 0, "delta": {"type": "text_delta", "text": f"{time.monotonic_ns()} "}}
            writer.write(_chunk(_sse("content_block_delta", delta)))
            await writer.drain()
        self._end(writer)
        await writer.drain()

    async def _paced_frames(self, writer: asyncio.StreamWriter, events: int, interval: float) -> None:
        """A ConverseStream answer in AWS event-stream frames, one `contentBlockDelta` frame per event,
        paced like `_paced`, each delta's text its send time."""
        headers = [
            ("date", formatdate(usegmt=True)),
            ("content-type", "application/vnd.amazon.eventstream"),
            ("x-amzn-requestid", secrets.token_hex(16)),
            ("transfer-encoding", "chunked"),
        ]
        writer.write(self._head(200, headers) + _chunk(event_frame("messageStart", b'{"role":"assistant"}')))
        await writer.drain()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index in range(events):
            delay = start + (index + 1) * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            delta = f'{{"contentBlockIndex":0,"delta":{{"text":"{time.monotonic_ns()} "}}}}'.encode()
            writer.write(_chunk(event_frame("contentBlockDelta", delta)))
            await writer.drain()
        metadata = json.dumps({"usage": converse_usage(USAGE), "metrics": {"latencyMs": 1}}).encode()
        closing = event_frame("contentBlockStop", b'{"contentBlockIndex":0}')
        closing += event_frame("messageStop", b'{"stopReason":"end_turn"}') + event_frame(
            "metadata", metadata
        )
        writer.write(_chunk(closing) + b"0\r\n\r\n")
        await writer.drain()

    async def _bulk(self, writer: asyncio.StreamWriter, model: str, size: int) -> None:
        self._start(writer, model)
        text = ("lorem ipsum dolor sit amet " * (BULK_RECORD_TEXT // 27 + 1))[:BULK_RECORD_TEXT]
        record = _sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})
        batch = _chunk(record * BULK_RECORDS_PER_WRITE)
        sent = 0
        while sent < size:
            writer.write(batch)
            sent += len(batch)
            await writer.drain()
        self._end(writer)
        await writer.drain()

    async def _bomb(self, writer: asyncio.StreamWriter, kind: str) -> None:
        wire = self.bombs[kind]
        if kind == "json":
            headers = [*self._headers("application/json"), ("content-encoding", "gzip")]
            headers.append(("content-length", str(len(wire))))
            writer.write(self._head(200, headers) + wire)
            await writer.drain()
            return
        headers = [*self._headers("text/event-stream; charset=utf-8"), ("content-encoding", "gzip")]
        headers += [("cache-control", "no-cache"), ("transfer-encoding", "chunked")]
        writer.write(self._head(200, headers))
        for index in range(0, len(wire), BOMB_CHUNK):
            writer.write(_chunk(wire[index : index + BOMB_CHUNK]))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _main(host: str, port: int, cert: str, key: str, bomb_bytes: int = 0) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    upstream = Upstream(bomb_bytes)
    server = await asyncio.start_server(upstream.serve, host, port, ssl=context, limit=MAX_HEAD_BYTES)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", required=True, help="PEM server certificate (for api.anthropic.com)")
    parser.add_argument("--key", required=True, help="PEM private key of --cert")
    parser.add_argument("--bomb-bytes", type=int, default=0, help="what `bench=bomb` bodies inflate to")
    args = parser.parse_args(argv)
    asyncio.run(_main(args.host, args.port, args.cert, args.key, max(0, args.bomb_bytes)))
    sys.exit(0)


if __name__ == "__main__":
    main()
