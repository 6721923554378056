"""Headers that exist only on the wire: the real credential is written into the request as it is sent
upstream, and never onto the flow.

Anything that reads a flow while its request is in flight — mitmweb's REST API (the flow list, one flow, a
dump of all flows), an export, another addon, `-w` at shutdown — would otherwise see the real credential in
the window between the request leaving and the response headers arriving. mitmproxy has no hook at the
moment of sending, so thin wrappers around its upstream-side HTTP/1 and HTTP/2 layers send a copy of the
request with the registered headers instead of the flow's own request object. The copy lives only as long
as the connection layer needs it. (An HTTP/3 upstream, which mitmproxy only uses in QUIC modes sluice does
not support, is not wrapped.)
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Generator
from typing import Any

from mitmproxy import http
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.http import _http1, _http2
from mitmproxy.proxy.layers.http._events import RequestHeaders

from addons.layer_patch import Method, patch_once

Fields = tuple[tuple[bytes, bytes], ...]

# id(request object) → (that object, the header fields to send in its place). The weak reference makes sure
# a recycled id() never matches another request.
_PENDING: dict[int, tuple[weakref.ref[http.Request], Fields]] = {}


def send_with(request: http.Request, fields: Fields) -> None:
    """Send `request` upstream with `fields` as its headers, leaving the request's own headers as they are."""
    _PENDING[id(request)] = (weakref.ref(request), fields)


def forget(request: http.Request) -> None:
    """Drop what `send_with` registered (sent or not): the call is over."""
    _PENDING.pop(id(request), None)


def pending() -> int:
    return len(_PENDING)


def _on_the_wire(event: Any) -> Any:
    if not isinstance(event, RequestHeaders):
        return event
    entry = _PENDING.get(id(event.request))
    if entry is None or entry[0]() is not event.request:
        return event
    # A shallow copy with headers of its own: the body and everything else are shared, not copied
    # (`Request.copy()` serializes the whole request, ~90 µs).
    wire = copy.copy(event.request)
    wire.data = copy.copy(event.request.data)
    wire.data.headers = http.Headers(entry[1])
    return RequestHeaders(event.stream_id, wire, event.end_stream)


def install() -> None:
    patch_once(_http1.Http1Client, "send", _rewired)  # HTTP/1.1 upstreams: every request event passes here
    patch_once(_http2.Http2Client, "_handle_event", _rewired)  # HTTP/2 upstreams: likewise


def _rewired(original: Method) -> Method:
    def wrapped(self: Any, event: Any) -> Generator[commands.Command, Any, None]:
        yield from original(self, _on_the_wire(event))

    return wrapped
