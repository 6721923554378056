"""The idle-stream watchdog (addons/watchdog.py): a stream whose upstream goes silent is ended with the
provider's own error event, and its row says why."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from mitmproxy import connection, http

from addons import mitm_internals
from addons.meter import Meter
from addons.watchdog import Watchdog
from rules.providers import provider
from tests.addons.proxy import CONFIG, configured, llm_flow

IDLE_S = 0.2
CONFIG_IDLE = f"idle_timeout_s = {IDLE_S}\n" + CONFIG


class Connection:
    """What the watchdog does to the client's connection (in the proxy: addons/mitm_internals.py)."""

    def __init__(self) -> None:
        self.sent = b""
        self.closed: list[connection.Server] = []

    def send_to_client(self, client: connection.Client, data: bytes) -> None:
        self.sent += data

    def close_server(self, server: connection.Server) -> None:
        self.closed.append(server)


@pytest.fixture
def client_connection(monkeypatch: pytest.MonkeyPatch) -> Connection:
    live = Connection()
    monkeypatch.setattr(mitm_internals, "proxy_connection", lambda client: live)
    return live


def stream(headers: dict[str, str] | None = None) -> http.Response:
    fields = {"content-type": "text/event-stream", "transfer-encoding": "chunked", **(headers or {})}
    return http.Response.make(200, b"", fields)


async def ended(connection_: Connection, deadline_s: float = 10) -> bool:
    deadline = time.monotonic() + deadline_s
    while not connection_.closed:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_a_silent_stream_is_ended_with_the_providers_error_event_and_the_row_says_why(
    tmp_path: Path, client_connection: Connection
) -> None:
    flow = llm_flow()
    watchdog: list[Watchdog] = []

    def parts(core):  # type: ignore[no-untyped-def]
        watchdog.append(Watchdog(core))
        return [Meter(core), watchdog[0]]

    async def run() -> None:
        with configured(tmp_path, parts, CONFIG_IDLE) as proxy:
            await proxy.hook("request", flow)
            flow.response = stream()
            await proxy.hook("responseheaders", flow)
            assert flow.response.stream  # the meter tees it
            flow.response.stream(b"event: ping\ndata: {}\n\n")  # a first event, then silence
            watchdog[0].running()
            try:
                assert await ended(client_connection)
            finally:
                watchdog[0].done()
            call = proxy.record(flow)
            assert call is not None
            assert call.ended_by == f"sluice: the upstream sent nothing for {IDLE_S:g}s; the stream was ended"
            assert call.reader is not None and call.reader.reading.error  # the row reads the error event
            assert call.notes == [f"idle timeout after {IDLE_S:g}s"]

    asyncio.run(run())
    assert client_connection.closed == [flow.server_conn]
    message = f"sluice: the upstream sent nothing for {IDLE_S:g}s; the stream was ended"
    assert provider("anthropic").sse_error_event(504, message) in client_connection.sent
    assert client_connection.sent.endswith(b"\r\n0\r\n\r\n")  # the last chunk: the client's SDK sees the end


def test_a_compressed_stream_is_only_cut_upstream(tmp_path: Path, client_connection: Connection) -> None:
    flow = llm_flow()
    watchdog: list[Watchdog] = []

    def parts(core):  # type: ignore[no-untyped-def]
        watchdog.append(Watchdog(core))
        return [Meter(core), watchdog[0]]

    async def run() -> None:
        with configured(tmp_path, parts, CONFIG_IDLE) as proxy:
            await proxy.hook("request", flow)
            flow.response = stream({"content-encoding": "gzip"})
            await proxy.hook("responseheaders", flow)
            watchdog[0].running()
            try:
                assert await ended(client_connection)
            finally:
                watchdog[0].done()

    asyncio.run(run())
    assert client_connection.sent == b""  # an error record cannot be written into a gzip stream
    assert client_connection.closed == [flow.server_conn]


def test_an_answer_that_is_not_a_stream_is_not_watched(tmp_path: Path) -> None:
    flow = llm_flow()
    watchdog: list[Watchdog] = []

    def parts(core):  # type: ignore[no-untyped-def]
        watchdog.append(Watchdog(core))
        return [Meter(core), watchdog[0]]

    async def run() -> None:
        with configured(tmp_path, parts, CONFIG_IDLE) as proxy:
            await proxy.hook("request", flow)
            flow.response = http.Response.make(200, b"{}", {"content-type": "application/json"})
            await proxy.hook("responseheaders", flow)

    asyncio.run(run())
    assert watchdog[0].flows == {}
