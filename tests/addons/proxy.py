"""sluice's parts as the proxy builds and configures them, driven hook by hook without a proxy server
(mitmproxy's `taddons` and `tflow`): for the addons' own tests. The end-to-end tests run the real thing."""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.connection import Server
from mitmproxy.test import taddons, tflow, tutils

from addons import order, wire_headers
from addons.calls import Call
from addons.chain import Chain
from addons.core import SluiceCore

REAL_KEY = "sk-ant-api03-REAL-credential-for-tests-0123456789"
CLIENT_KEY = "client-key-of-alice"
HOST = "api.anthropic.com"
CONFIG = f"""
[[clients]]
name = "alice"
key = "{CLIENT_KEY}"
user_id = "alice@example.com"

[[upstreams]]
host = "{HOST}"
provider = "anthropic"
keys = ["{REAL_KEY}"]
"""
MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}]}


class Proxy:
    """A chain of parts, configured, whose hooks a test calls in turn."""

    def __init__(self, core: SluiceCore, chain: Chain, tctx: taddons.context) -> None:
        self.core, self.chain, self.tctx = core, chain, tctx

    async def hook(self, name: str, flow: http.HTTPFlow) -> None:
        method = getattr(self.chain, name, None)
        if method is None:
            return  # no part has it
        result = method(flow)
        if inspect.isawaitable(result):
            await result

    async def call(self, flow: http.HTTPFlow, response: http.Response | None = None) -> None:
        """The request side, then (unless a part answered it) `response` as the upstream's answer."""
        await self.hook("request", flow)
        if flow.response is None and response is not None:
            flow.response = response
        if flow.response is not None:
            await self.hook("responseheaders", flow)
            await self.hook("response", flow)

    def record(self, flow: http.HTTPFlow) -> Call | None:
        return self.core.calls.get(flow.id)


@contextlib.contextmanager
def configured(
    tmp_path: Path,
    make_parts: Callable[[SluiceCore], Sequence[object]],
    config: str = CONFIG,
    ordering: Iterable[order.Before] = order.ORDER,
    **options: Any,
) -> Iterator[Proxy]:
    """The core and the parts `make_parts` builds around it, as one chain, configured with `config`."""
    path = tmp_path / "sluice.toml"
    path.write_text(config)
    core = SluiceCore()
    chain = Chain("sluice", [core, *make_parts(core)], ordering)
    # mitmproxy's proxy server addon defines the options sluice reads of it (stream_large_bodies, ...); it
    # serves nothing unless it runs.
    with taddons.context(Proxyserver(), chain) as tctx:
        tctx.configure(chain, sluice_config=str(path), sluice_db=str(tmp_path / "sluice.db"), **options)
        try:
            yield Proxy(core, chain, tctx)
        finally:
            core.done()


def llm_flow(
    body: dict[str, Any] | bytes | None = None,
    *,
    host: str = HOST,
    port: int = 443,
    path: str = "/v1/messages",
    key: str | None = CLIENT_KEY,
    headers: Iterable[tuple[str, str]] = (),
    http_version: str = "HTTP/1.1",
) -> http.HTTPFlow:
    """A live POST to a provider API, over TLS to `host`, as a client sends it."""
    content = body if isinstance(body, bytes) else json.dumps(MESSAGE if body is None else body).encode()
    fields = [(b"host", host.encode()), (b"content-type", b"application/json")]
    if http_version == "HTTP/1.1":
        fields.append((b"content-length", str(len(content)).encode()))
    if key is not None:
        fields.append((b"x-api-key", key.encode()))
    fields += [(name.encode(), value.encode()) for name, value in headers]
    request = tutils.treq(
        method=b"POST",
        scheme="https",
        host=host,
        port=port,
        path=path.encode(),
        http_version=http_version.encode(),
        headers=http.Headers(fields),
        content=content,
    )
    flow = tflow.tflow(req=request)
    flow.client_conn.sni = host
    flow.live = True
    return flow


def answer(
    status: int, body: dict[str, Any] | bytes, headers: Iterable[tuple[str, str]] = ()
) -> http.Response:
    """The upstream's answer: JSON (or bytes as given)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.Response.make(status, content, {"content-type": "application/json", **dict(headers)})


def on_the_wire(flow: http.HTTPFlow, host: str = HOST, port: int = 443) -> http.Request:
    """The request as it is written upstream on a TLS connection to `host` (addons/wire_headers.py): with the
    headers the credential swap registered, if it did. Sent: the registration is dropped, as the credential
    part drops it once the response headers come."""
    server = Server(address=(host, port))
    server.tls, server.sni = True, host
    try:
        return wire_headers._on_the_wire(flow.request, server) or flow.request
    finally:
        wire_headers.forget(flow.request)
