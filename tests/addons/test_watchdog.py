"""The idle-stream watchdog (addons/watchdog.py): a stream whose upstream goes silent is ended with the
provider's own error event, and its row says why."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from mitmproxy import connection, http

from addons import mitm_internals
from addons.calls import Call
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


async def watch(
    tmp_path: Path, flow: http.HTTPFlow, response: http.Response, first: bytes = b""
) -> tuple[Watchdog, Call | None]:
    """Meter and watchdog over `flow`, answered with `response` (streamed: `first`, then nothing); the
    watchdog runs until it has ended the stream, or its deadline. The watchdog and the call's record."""
    parts: list[object] = []

    def make(core):  # type: ignore[no-untyped-def]
        parts.extend([Meter(core), Watchdog(core)])
        return parts

    with configured(tmp_path, make, CONFIG_IDLE) as proxy:
        watchdog = parts[1]
        assert isinstance(watchdog, Watchdog)
        await proxy.hook("request", flow)
        flow.response = response
        await proxy.hook("responseheaders", flow)
        if first:
            assert callable(flow.response.stream)  # the meter tees it
            flow.response.stream(first)
        if watchdog.flows:
            watchdog.running()
            try:
                live = mitm_internals.proxy_connection(flow.client_conn)
                assert isinstance(live, Connection) and await ended(live)
            finally:
                watchdog.done()
        return watchdog, proxy.record(flow)


def test_a_silent_stream_is_ended_with_the_providers_error_event_and_the_row_says_why(
    tmp_path: Path, client_connection: Connection
) -> None:
    flow = llm_flow()
    _, call = asyncio.run(watch(tmp_path, flow, stream(), b"event: ping\ndata: {}\n\n"))
    message = f"sluice: the upstream sent nothing for {IDLE_S:g}s; the stream was ended"
    assert call is not None and call.ended_by == message
    assert call.reader is not None and call.reader.reading.error  # the row reads the error event
    assert call.notes == [f"idle timeout after {IDLE_S:g}s"]
    assert client_connection.closed == [flow.server_conn]
    assert provider("anthropic").sse_error_event(504, message) in client_connection.sent
    assert client_connection.sent.endswith(b"\r\n0\r\n\r\n")  # the last chunk: the client's SDK sees the end


def test_a_compressed_stream_is_only_cut_upstream(tmp_path: Path, client_connection: Connection) -> None:
    flow = llm_flow()
    asyncio.run(watch(tmp_path, flow, stream({"content-encoding": "gzip"})))
    assert client_connection.sent == b""  # an error record cannot be written into a gzip stream
    assert client_connection.closed == [flow.server_conn]


def test_an_answer_that_is_not_a_stream_is_not_watched(tmp_path: Path, client_connection: Connection) -> None:
    flow = llm_flow()
    answer = http.Response.make(200, b"{}", {"content-type": "application/json"})
    watchdog, _ = asyncio.run(watch(tmp_path, flow, answer))
    assert watchdog.flows == {} and client_connection.closed == []
