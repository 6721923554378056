"""When the upstream fails before answering, the client gets an error in the provider's own envelope.

mitmproxy answers a request whose upstream could not be reached, reset the connection or closed it before a
response with its own HTML error page (`make_error_response` in its HTTP/1 layer), which no SDK can read:
they expect `{"type":"error",...}` or `{"error":{...}}`. mitmproxy has no hook to replace that page, so
this addon registers the envelope in the `error` hook, and thin wrappers around the client-side HTTP/1 and
HTTP/2 layers write it instead of the HTML page for that one request. Everything else — HTTP/3 clients,
flows that already have a response, non-provider traffic — keeps mitmproxy's behaviour.

The status follows what the providers themselves send for a failing backend: 502 for a connection that
failed or broke, 504 for a timeout; with `x-should-retry: true` so the SDKs' own retry takes over.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict, deque
from collections.abc import Generator
from typing import Any

from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.http import _http1, _http2
from mitmproxy.proxy.layers.http._events import (
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
)

from addons.core import SluiceCore, destination
from addons.layer_patch import Method, patch_once
from rules.providers import provider as provider_named

log = logging.getLogger("sluice")

# id(request object) → (that object, the bytes to send instead of mitmproxy's error page). The HTTP/1
# server layer holds the very request object the flow has, which is how the two are matched; the weak
# reference makes sure a recycled id() never matches another request.
_ENVELOPES: OrderedDict[int, tuple[weakref.ref[http.Request], bytes]] = OrderedDict()
# HTTP/2: the stream layer knows the stream id, the flow does not; the error event it sends carries the
# flow's error message, so (client connection id, message) finds the envelope. Two streams of one connection
# failing with the same message get the same envelope, so which one pops which does not matter.
_H2_ENVELOPES: OrderedDict[tuple[str, str], deque[http.Response]] = OrderedDict()
_MAX_PENDING = 1024  # errors whose page is never sent (the client had already gone) must not pile up


def _install() -> None:
    patch_once(_http1.Http1Server, "send", _envelope_over_http1)
    patch_once(_http2.Http2Server, "_handle_event", _envelope_over_http2)


def _envelope_over_http1(original: Method) -> Method:
    def send(self: Any, event: Any) -> Generator[commands.Command, Any, None]:
        if isinstance(event, ResponseProtocolError) and self.request is not None:
            entry = _ENVELOPES.pop(id(self.request), None)
            if (
                entry is not None
                and entry[0]() is self.request
                and not self.response
                and self.conn.state & ConnectionState.CAN_WRITE
            ):
                yield commands.SendData(self.conn, entry[1])
                yield commands.CloseConnection(self.conn)
                return
        yield from original(self, event)

    return send


def _envelope_over_http2(original: Method) -> Method:
    def handle_event(self: Any, event: Any) -> Generator[commands.Command, Any, None]:
        if isinstance(event, ResponseProtocolError):
            response = _pop_h2(self.context.client.id, event.message)
            stream = self.h2_conn.streams.get(event.stream_id)
            if (
                response is not None
                and stream is not None
                and self.is_open_for_us(event.stream_id)
                and not stream.state_machine.headers_sent
            ):
                # The same three events an answer from the upstream would be, framed by mitmproxy itself.
                yield from original(self, ResponseHeaders(event.stream_id, response, end_stream=False))
                yield from original(self, ResponseData(event.stream_id, response.raw_content or b""))
                yield from original(self, ResponseEndOfMessage(event.stream_id))
                return
        yield from original(self, event)

    return handle_event


def _pop_h2(client_id: str, message: str) -> http.Response | None:
    waiting = _H2_ENVELOPES.get((client_id, message))
    if not waiting:
        return None
    response = waiting.popleft()
    if not waiting:
        del _H2_ENVELOPES[(client_id, message)]
    return response


class UpstreamErrors:
    def __init__(self, core: SluiceCore) -> None:
        self.core = core
        _install()

    def error(self, flow: http.HTTPFlow) -> None:
        # A streamed response has already reached the client; mitmproxy then only closes the connection.
        if flow.error is None or (flow.response is not None and flow.response.stream):
            return
        call = self.core.calls.get(flow.id)
        provider = call.provider if call is not None else self.core.provider_for(destination(flow).host)
        version = flow.request.http_version
        if provider is None or version not in ("HTTP/1.1", "HTTP/1.0", "HTTP/2.0"):
            return
        reason = flow.error.msg
        status = 504 if "timeout" in reason.lower() or "timed out" in reason.lower() else 502
        message = f"sluice: the upstream {destination(flow).authority} failed before answering: {reason}"
        headers = {"content-type": "application/json", "x-should-retry": "true"}
        if version != "HTTP/2.0":
            headers["connection"] = "close"  # HTTP/1: the connection's state after the failure is unknown
        response = http.Response.make(
            status, provider_named(provider).error_body(status, message, None), headers
        )
        response.http_version = version
        if version == "HTTP/2.0":
            _H2_ENVELOPES.setdefault((flow.client_conn.id, reason), deque()).append(response)
            _H2_ENVELOPES.move_to_end((flow.client_conn.id, reason))
            while len(_H2_ENVELOPES) > _MAX_PENDING:
                _H2_ENVELOPES.popitem(last=False)
            return
        _ENVELOPES[id(flow.request)] = (weakref.ref(flow.request), http1.assemble_response(response))
        while len(_ENVELOPES) > _MAX_PENDING:
            _ENVELOPES.popitem(last=False)

    def response(self, flow: http.HTTPFlow) -> None:
        _ENVELOPES.pop(id(flow.request), None)

    def done(self) -> None:
        _ENVELOPES.clear()
        _H2_ENVELOPES.clear()
