"""Contract tests: one per mitmproxy behaviour sluice relies on beyond mitmproxy's documented API
(addons/mitm_internals.py). Each fails when a mitmproxy upgrade changes that behaviour; run them against a
new mitmproxy before adding it to `VERIFIED_VERSIONS`.

Where a behaviour only shows with real connections, mitmproxy runs in this process as mitmdump runs it (its
`DumpMaster` and default addons, on a loopback port, on a thread of its own) and real clients (httpx, over
HTTP/1.1 and HTTP/2) go through it to a closed port, the fake provider or an HTTP/2-only upstream.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import mitmproxy.ctx
import mitmproxy.proxy.layers.tls
import mitmproxy.version
import pytest
from mitmproxy import connection, exceptions, http, options
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.layers.http._events import RequestData, RequestHeaders
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.tools import main
from mitmproxy.tools.dump import DumpMaster

from addons import decoding, mitm_internals, startup
from addons.core import SluiceCore
from tests.e2e.harness import CertAuthority, curl, free_port
from tests.fake_provider import FakeProvider
from tests.h2_upstream import H2Upstream

START_TIMEOUT = 20.0
TIMEOUT = 10.0
MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
ENVELOPE = {"type": "error", "error": {"type": "api_error", "message": "sluice's own answer"}}


# mitmproxy in this process.


class InProcessProxy:
    """mitmproxy as mitmdump runs it, in this process on a thread of its own, on a loopback port."""

    def __init__(self, confdir: Path, addons: Sequence[object], settings: dict[str, Any]) -> None:
        self.confdir = confdir
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.port = 0
        self._thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self._main(addons, settings),), daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError(f"mitmproxy did not start within {START_TIMEOUT}s")
        if self._failure is not None:
            raise RuntimeError("mitmproxy did not start") from self._failure

    async def _main(self, addons: Sequence[object], settings: dict[str, Any]) -> None:
        try:
            self.master = DumpMaster(options.Options(), with_termlog=False, with_dumper=False)
            self.master.options.update(
                listen_host="127.0.0.1", listen_port=0, confdir=str(self.confdir), **settings
            )
            self.master.addons.add(*addons)
            running = asyncio.get_running_loop().create_task(self.master.run())
            proxyserver = self.master.addons.get("proxyserver")
            deadline = time.monotonic() + START_TIMEOUT
            while not proxyserver.listen_addrs():
                if running.done() or time.monotonic() > deadline:
                    raise RuntimeError("mitmproxy's proxy server did not listen")
                await asyncio.sleep(0.01)
            self.port = proxyserver.listen_addrs()[0][1]
        except BaseException as e:
            self._failure = e
            self._ready.set()
            return
        self._ready.set()
        await running

    @property
    def ca_pem(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    reverse = False  # for tests.e2e.harness.curl

    def client(self) -> httpx.Client:
        """An HTTP/1.1 client through this proxy. (For HTTP/2, curl: httpx offers HTTP/1.1 first in its
        TLS handshake, and mitmproxy takes the client's first choice.)"""
        trust = ssl.create_default_context(cafile=str(self.ca_pem))
        return httpx.Client(proxy=self.url, verify=trust, timeout=TIMEOUT, trust_env=False)

    def call(self, function: Callable[[], Any]) -> Any:
        """Run `function` on mitmproxy's event loop, where sluice's addons run, and return its result."""

        async def run() -> Any:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(TIMEOUT)

    def stop(self) -> None:
        if self._failure is None:
            self.master.shutdown()
        self._thread.join(TIMEOUT)


class Probe:
    """An addon noting the flows mitmproxy's hooks hand it, and running a test's action in `error`. With
    `stream`, responses are streamed (their `response` hook then runs after the client has the body)."""

    def __init__(self, *, stream: bool = False) -> None:
        self.stream = stream
        self.errored: list[http.HTTPFlow] = []
        self.responded: list[http.HTTPFlow] = []
        self.streaming: list[http.HTTPFlow] = []
        self.server_disconnects: list[connection.Server] = []
        self.on_error: Callable[[http.HTTPFlow], None] = lambda flow: None

    def error(self, flow: http.HTTPFlow) -> None:
        self.errored.append(flow)
        self.on_error(flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.stream and flow.response is not None:
            flow.response.stream = True  # as sluice's meter does for a streamed answer
            self.streaming.append(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self.responded.append(flow)

    def server_disconnected(self, data: Any) -> None:
        self.server_disconnects.append(data.server)


def wait_for(found: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := found():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(autouse=True)
def mitmproxy_context_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The masters built here set mitmproxy's global `ctx`; the tests after these find it as it was."""
    for name in ("master", "options", "log"):
        monkeypatch.setattr(mitmproxy.ctx, name, getattr(mitmproxy.ctx, name, None), raising=False)


@pytest.fixture
def start_mitmproxy(tmp_path: Path) -> Iterator[Callable[..., InProcessProxy]]:
    started: list[InProcessProxy] = []

    def start(*addons: object, **settings: Any) -> InProcessProxy:
        settings.setdefault("connection_strategy", "lazy")  # sluice's default (addons/core.py)
        proxy = InProcessProxy(tmp_path / f"mitm-{len(started)}", addons, settings)
        started.append(proxy)
        return proxy

    yield start
    for proxy in reversed(started):
        proxy.stop()


@pytest.fixture
def error_pages(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """`error_pages(http1, http2)` installs the error-page lookups for this test; sluice's come back after."""
    monkeypatch.setattr(mitm_internals, "_error_page_http1", mitm_internals._error_page_http1)
    monkeypatch.setattr(mitm_internals, "_error_page_http2", mitm_internals._error_page_http2)
    return mitm_internals.replace_error_pages


@pytest.fixture
def on_the_wire(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """`on_the_wire(rewrite)` installs the request rewrite for this test; sluice's comes back after."""
    monkeypatch.setattr(mitm_internals, "_on_the_wire", mitm_internals._on_the_wire)
    return mitm_internals.rewrite_requests_on_the_wire


def marking(requests: list[tuple[http.Request, connection.Server]]) -> Callable[..., http.Request]:
    """A rewrite that adds `x-on-the-wire: yes` to a copy of each request, noting what it was handed."""

    def rewrite(request: http.Request, server: connection.Server) -> http.Request:
        requests.append((request, server))
        wire = request.copy()
        wire.headers["x-on-the-wire"] = "yes"
        return wire

    return rewrite


# The installed mitmproxy.


def test_the_installed_mitmproxy_has_every_internal_sluice_relies_on() -> None:
    assert mitm_internals.missing_internals() == []


def test_the_installed_mitmproxy_is_a_verified_version() -> None:
    version = mitm_internals.mitmproxy_version()
    assert version == mitmproxy.version.VERSION
    assert version in mitm_internals.VERIFIED_VERSIONS, (
        f"mitmproxy {version} is installed: once every test in this module passes on it, add it to "
        "VERIFIED_VERSIONS in addons/mitm_internals.py"
    )


def test_an_internal_gone_from_mitmproxy_stops_start_up_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(mitmproxy.proxy.layers.tls, "ClientTLSLayer")
    gone = "mitmproxy.proxy.layers.tls.ClientTLSLayer"
    assert gone in mitm_internals.missing_internals()
    with pytest.raises(startup.StartupError) as refused:
        startup.check_mitmproxy()
    assert gone in str(refused.value)
    assert f"  {gone}" in refused.value.lines  # one line each on stderr at start-up
    with taddons.context(SluiceCore()) as tctx, pytest.raises(exceptions.OptionsError, match=gone):
        tctx.master.addons.get("sluicecore").configure(set())  # the core checks until mitmproxy runs


def test_an_unverified_mitmproxy_is_warned_about_once_with_the_tests_to_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(mitmproxy.version, "VERSION", "12.99.0")
    monkeypatch.setattr(mitm_internals, "_warned_versions", set())
    with caplog.at_level(logging.WARNING, logger="sluice"):
        mitm_internals.check_startup()
        mitm_internals.check_startup()  # configure runs again on every option change
    [warning] = caplog.messages
    assert "mitmproxy 12.99.0 is not a version sluice was verified against" in warning
    assert "pytest tests/addons/test_mitm_internals.py" in warning


# The client-side layers: what is written when the upstream fails before answering.


def test_http1_upstream_failure_is_written_by_the_wrapped_layer_for_the_flows_request(
    start_mitmproxy: Callable[..., InProcessProxy], error_pages: Callable[..., None]
) -> None:
    replacements: dict[int, http.Response] = {}
    asked: list[http.Request] = []

    def http1(request: http.Request) -> http.Response | None:
        asked.append(request)
        return replacements.pop(id(request), None)

    error_pages(http1, lambda client_id, message: None)
    probe = Probe()
    # The `error` hook runs before the layer writes the page: what it registers is there to be written.
    probe.on_error = lambda flow: (
        replacements.__setitem__(id(flow.request), http.Response.make(502, json.dumps(ENVELOPE)))
        if flow.request.path == "/sluice"
        else None
    )
    proxy = start_mitmproxy(probe)
    closed = free_port()
    with proxy.client() as client:
        theirs = client.get(f"http://127.0.0.1:{closed}/mitmproxy")
        ours = client.get(f"http://127.0.0.1:{closed}/sluice")

    assert theirs.status_code == 502 and theirs.headers["content-type"].startswith("text/html")
    assert (ours.status_code, ours.json()) == (502, ENVELOPE)
    assert [request.path for request in asked] == ["/mitmproxy", "/sluice"]
    assert asked[1] is probe.errored[1].request  # the layer holds the flow's very request object


def test_http2_upstream_failure_is_written_by_the_wrapped_layer_for_the_flows_error_message(
    start_mitmproxy: Callable[..., InProcessProxy], error_pages: Callable[..., None]
) -> None:
    replacements: dict[tuple[str, str], http.Response] = {}
    asked: list[tuple[str, str]] = []

    def http2(client_id: str, message: str) -> http.Response | None:
        asked.append((client_id, message))
        return replacements.pop((client_id, message), None)

    error_pages(lambda request: None, http2)
    probe = Probe()
    probe.on_error = lambda flow: (
        replacements.__setitem__(
            (flow.client_conn.id, flow.error.msg if flow.error else ""),
            http.Response.make(502, json.dumps(ENVELOPE), {"content-type": "application/json"}),
        )
        if flow.request.path == "/sluice"
        else None
    )
    proxy = start_mitmproxy(probe)
    closed = free_port()
    theirs = curl(proxy, "--http2", f"https://127.0.0.1:{closed}/mitmproxy")  # type: ignore[arg-type]
    ours = curl(proxy, "--http2", f"https://127.0.0.1:{closed}/sluice")  # type: ignore[arg-type]

    assert [flow.request.http_version for flow in probe.errored] == ["HTTP/2.0", "HTTP/2.0"]
    assert theirs.status == 502 and (theirs.header("content-type") or "").startswith("text/html")
    assert (ours.status, json.loads(ours.body)) == (502, ENVELOPE)
    assert ours.header("content-type") == "application/json"
    flow = probe.errored[1]
    assert flow.error is not None
    assert asked[1] == (flow.client_conn.id, flow.error.msg)


# The upstream-side layers: what is written on the wire.


Rewritten = list[tuple[http.Request, connection.Server]]


@pytest.fixture
def rewriting_proxy(
    start_mitmproxy: Callable[..., InProcessProxy], on_the_wire: Callable[..., None], test_ca: CertAuthority
) -> tuple[InProcessProxy, Probe, Rewritten]:
    """A proxy whose upstream layers write each request with `x-on-the-wire: yes` added, its probe, and the
    (request, server connection) pairs the rewrite was handed."""
    seen: Rewritten = []
    on_the_wire(marking(seen))
    probe = Probe()
    return start_mitmproxy(probe, ssl_verify_upstream_trusted_ca=str(test_ca.ca_cert)), probe, seen


def handed_the_flows_request(probe: Probe, seen: Rewritten) -> connection.Server:
    """The rewrite was handed the flow's own request, which stays as it was; the server connection it got."""
    [flow] = probe.responded
    assert "x-on-the-wire" not in flow.request.headers  # the flow's request is not what went out
    [(request, server)] = seen
    assert request is flow.request
    return server


def test_http1_upstream_writes_the_request_the_wrapper_hands_it(
    rewriting_proxy: tuple[InProcessProxy, Probe, Rewritten], fake: FakeProvider
) -> None:
    proxy, probe, seen = rewriting_proxy
    body = json.dumps(MESSAGE).encode()
    with proxy.client() as client:
        answer = client.post(f"https://127.0.0.1:{fake.port}/v1/messages", content=body)

    assert answer.status_code == 200, answer.text
    [received] = fake.requests
    assert received.header("x-on-the-wire") == "yes"
    assert received.body == body  # the request head is replaced, the body still follows it
    server = handed_the_flows_request(probe, seen)
    assert server.address == ("127.0.0.1", fake.port) and server.tls and server.alpn != b"h2"


def test_http2_upstream_writes_the_request_the_wrapper_hands_it(
    rewriting_proxy: tuple[InProcessProxy, Probe, Rewritten], test_ca: CertAuthority
) -> None:
    proxy, probe, seen = rewriting_proxy
    body = json.dumps(MESSAGE).encode()
    with H2Upstream(certfile=test_ca.leaf_cert, keyfile=test_ca.leaf_key) as upstream:
        url = f"https://127.0.0.1:{upstream.port}/v1/messages"
        answer = curl(proxy, "--http2", "--data-binary", body.decode(), url)  # type: ignore[arg-type]
        received = upstream.received

    assert answer.status == 200, answer.stderr
    assert [(r.header("x-on-the-wire"), r.body) for r in received] == [("yes", body)]
    server = handed_the_flows_request(probe, seen)
    assert server.address == ("127.0.0.1", upstream.port) and server.alpn == b"h2"


def test_a_request_event_keeps_its_stream_and_end_of_stream_and_other_events_pass(
    on_the_wire: Callable[..., None],
) -> None:
    on_the_wire(marking([]))
    request, server = tutils.treq(), connection.Server(address=("127.0.0.1", 443))
    for end_stream in (True, False):
        sent = mitm_internals.request_on_the_wire(RequestHeaders(3, request, end_stream), server)
        assert (sent.stream_id, sent.end_stream) == (3, end_stream)
        assert sent.request.headers["x-on-the-wire"] == "yes"
    data = RequestData(3, b"body")
    assert mitm_internals.request_on_the_wire(data, server) is data


# The connections the proxy server holds: what the idle-stream watchdog writes and closes.


def test_the_layer_tree_leads_to_the_clients_tls_layer_which_writes_into_its_stream(
    start_mitmproxy: Callable[..., InProcessProxy], fake: FakeProvider, test_ca: CertAuthority
) -> None:
    resume = threading.Event()
    fake.next(stall_after=1, stall_seconds=TIMEOUT, resume=resume)
    probe = Probe(stream=True)
    proxy = start_mitmproxy(probe, ssl_verify_upstream_trusted_ca=str(test_ca.ca_cert))
    url = f"https://127.0.0.1:{fake.port}/v1/messages"
    try:
        with (
            proxy.client() as client,
            client.stream("POST", url, content=json.dumps({**MESSAGE, "stream": True})) as answer,
        ):
            pieces = answer.iter_raw()
            first = b""
            while b"\n\n" not in first:  # the upstream's first record (in one piece or more), then it stalls
                first += next(pieces)
            [flow] = wait_for(lambda: probe.streaming, "the streamed response")
            live = proxy.call(lambda: mitm_internals.proxy_connection(flow.client_conn))
            assert live is not None
            tls = proxy.call(lambda: live.client_tls_layer(flow.client_conn))
            assert isinstance(tls, mitmproxy.proxy.layers.tls.ClientTLSLayer) and tls.conn == flow.client_conn
            proxy.call(lambda: live.send_to_client(flow.client_conn, b"9\r\nsluice-in\r\n0\r\n\r\n"))
            rest = b"".join(pieces)  # read to the last chunk sluice wrote: the body ends there
            proxy.call(lambda: live.close_server(flow.server_conn))
            wait_for(lambda: flow.server_conn in probe.server_disconnects, "the upstream connection closed")
    finally:
        resume.set()
    assert b"message_start" in first
    assert rest == b"sluice-in"


def test_a_closed_client_connection_is_no_longer_held() -> None:
    with taddons.context(Proxyserver()):
        assert mitm_internals.proxy_connection(tflow.tclient_conn()) is None


# The option store and the master.


def test_an_option_nobody_set_is_told_from_one_set_to_its_default_value() -> None:
    with taddons.context(Proxyserver()) as tctx:
        assert tctx.options.connection_strategy == "eager"  # mitmproxy's default
        assert mitm_internals.option_left_unset(tctx.options, "connection_strategy")
        tctx.options.set("connection_strategy=eager")  # as `--set connection_strategy=eager` does
        assert not mitm_internals.option_left_unset(tctx.options, "connection_strategy")
        assert not mitm_internals.option_left_unset(tctx.options, "no_such_option")


def test_an_unknown_set_option_is_kept_aside_not_refused() -> None:
    with taddons.context() as tctx:
        tctx.options.set("sluice_conifg=x.toml", defer=True)  # how mitmproxy's command line sets them
        assert list(mitm_internals.deferred_options(tctx.options)) == ["sluice_conifg"]


def test_mitmdump_alone_runs_a_dump_master_and_every_tool_checks_start_up_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    masters: list[type] = []
    monkeypatch.setattr(main, "run", lambda master, *args: masters.append(master))
    main.mitmdump([])
    main.mitmweb([])
    dump_master, web_master = masters

    async def seen_as(master_class: type) -> tuple[bool, bool]:
        master = master_class(options.Options(), with_termlog=False)
        seen = mitm_internals.is_mitmdump(master), mitm_internals.starting_from_command_line()
        master.addons.get("errorcheck").finish()  # its log handler, installed as it was built
        await master.done()
        return seen

    assert asyncio.run(seen_as(dump_master)) == (True, True)
    assert asyncio.run(seen_as(web_master)) == (False, True)
    with taddons.context() as tctx:  # a master built in a test
        assert not mitm_internals.is_mitmdump(tctx.master)
        assert not mitm_internals.starting_from_command_line()


def test_every_hook_sluice_implements_is_one_mitmproxy_calls_by_that_name() -> None:
    used = {"load", "configure", "running", "done", "requestheaders", "request", "responseheaders"}
    used |= {"response", "error", "server_connect", "tls_clienthello", "dns_request"}
    assert used <= set(mitm_internals.hook_names())


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("api.anthropic.com", ("api.anthropic.com", None)),
        ("api.anthropic.com:8443", ("api.anthropic.com", 8443)),
        ("[::1]:8080", ("::1", 8080)),
        ("api.anthropic.com:443@evil.example", ("api.anthropic.com:443@evil.example", None)),
    ],
)
def test_an_authority_is_parsed_as_mitmproxy_parses_it_and_garbage_kept_whole(
    value: str, parsed: tuple[str, int | None]
) -> None:
    assert mitm_internals.parse_authority(value) == parsed


# Content decoding.


def test_message_content_decodes_through_the_wrapped_function(monkeypatch: pytest.MonkeyPatch) -> None:
    decoding.bound_mitmproxy_decoding()
    monkeypatch.setattr(decoding, "_limit", 1000)
    small, large = tutils.tresp(), tutils.tresp()
    small.headers["content-encoding"] = large.headers["content-encoding"] = "gzip"
    small.raw_content, large.raw_content = gzip.compress(b"a" * 1000), gzip.compress(b"a" * 1001)
    assert small.content == b"a" * 1000
    with pytest.raises(ValueError, match="sluice_decode_max"):
        large.get_content()
    assert large.get_content(strict=False) == large.raw_content  # "cannot decode": the raw bytes


def test_a_wrapper_goes_on_once_however_often_it_is_installed() -> None:
    class Layer:
        def send(self, event: str) -> list[str]:
            return [event]

    class Patched(Layer):
        pass

    def exclaiming(original: mitm_internals.Method) -> mitm_internals.Method:
        def send(self: Any, event: str) -> list[str]:
            return original(self, event + "!")  # type: ignore[no-any-return]

        return send

    mitm_internals.patch_once(Patched, "send", exclaiming)
    first = Patched.send
    mitm_internals.patch_once(Patched, "send", exclaiming)  # a reloaded script installs again

    assert Patched.send is first
    assert Patched().send("hi") == ["hi!"]  # wrapped once, not twice around itself
    assert Layer().send("hi") == ["hi"]
