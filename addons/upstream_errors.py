"""When the upstream fails before answering, the client gets an error in the provider's own envelope.

mitmproxy answers a request whose upstream could not be reached, reset the connection or closed it before a
response with its own HTML error page (`make_error_response` in its HTTP/1 layer), which no SDK can read:
they expect `{"type":"error",...}` or `{"error":{...}}`. mitmproxy has no hook to replace that page, so
this addon registers the envelope in the `error` hook, and thin wrappers around the client-side HTTP/1 and
HTTP/2 layers (addons/mitm_internals.py) write it instead of the HTML page for that one request. Everything
else — HTTP/3 clients, flows that already have a response, non-provider traffic — keeps mitmproxy's
behaviour.

The status follows what the providers themselves send for a failing backend: 502 for a connection that
failed or broke, 504 for a timeout; with `x-should-retry: true` so the SDKs' own retry takes over.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict, deque

from mitmproxy import http

from addons import mitm_internals
from addons.core import SluiceCore, destination

log = logging.getLogger("sluice")

# id(request object) → (that object, the response to send instead of mitmproxy's error page). The HTTP/1
# server layer holds the very request object the flow has, which is how the two are matched; the weak
# reference makes sure a recycled id() never matches another request.
_ENVELOPES: OrderedDict[int, tuple[weakref.ref[http.Request], http.Response]] = OrderedDict()
# HTTP/2: the stream layer knows the stream id, the flow does not; the error event it sends carries the
# flow's error message, so (client connection id, message) finds the envelope. Two streams of one connection
# failing with the same message get the same envelope, so which one pops which does not matter.
_H2_ENVELOPES: OrderedDict[tuple[str, str], deque[http.Response]] = OrderedDict()
_MAX_PENDING = 1024  # errors whose page is never sent (the client had already gone) must not pile up


def _pop_http1(request: http.Request) -> http.Response | None:
    entry = _ENVELOPES.pop(id(request), None)
    return entry[1] if entry is not None and entry[0]() is request else None


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
        mitm_internals.replace_error_pages(_pop_http1, _pop_h2)

    def error(self, flow: http.HTTPFlow) -> None:
        # A streamed response has already reached the client; mitmproxy then only closes the connection.
        if flow.error is None or (flow.response is not None and flow.response.stream):
            return
        provider = self.core.envelope(flow)
        version = flow.request.http_version
        if provider is None or version not in ("HTTP/1.1", "HTTP/1.0", "HTTP/2.0"):
            return
        reason = flow.error.msg
        status = 504 if "timeout" in reason.lower() or "timed out" in reason.lower() else 502
        message = f"sluice: the upstream {destination(flow).authority} failed before answering: {reason}"
        headers = {"content-type": "application/json", "x-should-retry": "true"}
        if version != "HTTP/2.0":
            headers["connection"] = "close"  # HTTP/1: the connection's state after the failure is unknown
        response = http.Response.make(status, provider.error_body(status, message, None), headers)
        response.http_version = version
        if version == "HTTP/2.0":
            _H2_ENVELOPES.setdefault((flow.client_conn.id, reason), deque()).append(response)
            _H2_ENVELOPES.move_to_end((flow.client_conn.id, reason))
            while len(_H2_ENVELOPES) > _MAX_PENDING:
                _H2_ENVELOPES.popitem(last=False)
            return
        _ENVELOPES[id(flow.request)] = (weakref.ref(flow.request), response)
        while len(_ENVELOPES) > _MAX_PENDING:
            _ENVELOPES.popitem(last=False)

    def response(self, flow: http.HTTPFlow) -> None:
        _ENVELOPES.pop(id(flow.request), None)

    def done(self) -> None:
        _ENVELOPES.clear()
        _H2_ENVELOPES.clear()
