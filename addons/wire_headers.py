"""Headers that exist only on the wire: the real credential is written into the request as it is sent
upstream, and never onto the flow.

Anything that reads a flow while its request is in flight — mitmweb's REST API (the flow list, one flow, a
dump of all flows), an export, another addon, `-w` at shutdown — would otherwise see the real credential in
the window between the request leaving and the response headers arriving. mitmproxy has no hook at the
moment of sending, so thin wrappers around its upstream-side HTTP/1 and HTTP/2 layers
(addons/mitm_internals.py) send a copy of the request with the registered headers instead of the flow's own
request object. The copy lives only as long as the connection layer needs it. (An HTTP/3 upstream, which
mitmproxy only uses in QUIC modes sluice does not support, is not wrapped.)

The wrappers also check, at the last moment, that the connection the request is about to be written on
goes where the credential may go: the host and port it was chosen for, over TLS, with that server name in
the TLS handshake. Something that moved the request after sluice chose (another addon, `map_remote`) gets
the request without any credential header instead, and the log says so. The host is compared as a name:
in transparent mode the connection a client opened goes to an address it chose, under whatever server name
it sent, so only a connection sluice made by the credential host's name (addons/confine.py re-points such
requests to it) is ever written a credential.
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Callable

from mitmproxy import http
from mitmproxy.connection import Server

from addons import mitm_internals
from rules.destination import Destination, normalize_host

log = logging.getLogger("sluice")

Fields = tuple[tuple[bytes, bytes], ...]

# Never written onto a connection that goes anywhere but the destination a credential was chosen for.
CREDENTIAL_HEADERS = frozenset({b"x-api-key", b"authorization", b"x-goog-api-key", b"x-amz-security-token"})

# Header fields fixed when the credential is chosen, or computed from the request as it is written (a
# signature over the final body: SigV4 is made after every rule and body rewrite).
FieldsSource = Fields | Callable[[http.Request], Fields]


class Delivery:
    """Whether the registered headers were written on the wire (False: withheld, or not sent yet)."""

    __slots__ = ("written",)

    def __init__(self) -> None:
        self.written = False


# id(request object) → (that object, the header fields to send in its place, where they may go, whether
# they went). The weak reference makes sure a recycled id() never matches another request.
_PENDING: dict[int, tuple[weakref.ref[http.Request], FieldsSource, Destination, Delivery]] = {}


def send_with(request: http.Request, fields: FieldsSource, destination: Destination) -> Delivery:
    """Send `request` upstream with `fields` as its headers, leaving the request's own headers as they are,
    provided the connection it is written on goes to `destination` over TLS."""
    delivery = Delivery()
    _PENDING[id(request)] = (weakref.ref(request), fields, destination, delivery)
    return delivery


def forget(request: http.Request) -> None:
    """Drop what `send_with` registered (sent or not): the call is over."""
    _PENDING.pop(id(request), None)


def pending() -> int:
    return len(_PENDING)


def _on_the_wire(request: http.Request, server: Server) -> http.Request | None:
    """What is written upstream on `server` in place of `request`: a copy with the registered headers (or
    without any credential header, on a connection that goes elsewhere); None for a request nothing was
    registered for (it is sent as it is)."""
    entry = _PENDING.get(id(request))
    if entry is None or entry[0]() is not request:
        return None
    wrong = _wrong_connection(server, entry[2])
    entry[3].written = wrong is None
    if wrong is None:
        # A signer runs only for the right connection: no signature is ever made for another host.
        fields = entry[1](request) if callable(entry[1]) else entry[1]
    else:
        log.error("sluice: credential withheld from %s %s: %s", request.method, request.url, wrong)
        fields = tuple(
            (name, value) for name, value in request.headers.fields if name.lower() not in CREDENTIAL_HEADERS
        )
    # A shallow copy with headers of its own: the body and everything else are shared, not copied
    # (`Request.copy()` serializes the whole request, ~90 µs).
    wire = copy.copy(request)
    wire.data = copy.copy(request.data)
    wire.data.headers = http.Headers(fields)
    return wire


def _wrong_connection(server: Server, destination: Destination) -> str | None:
    """Why `server` is not a connection the credential chosen for `destination` may be written on."""
    if server.address is None:
        return "the connection has no address"
    host, port = normalize_host(str(server.address[0])), server.address[1]
    if (host, port) != (destination.host, destination.port):
        return f"the connection goes to {host}:{port}, the credential is for {destination.authority}"
    if not server.tls or not destination.tls:
        return "the connection is not TLS"
    if server.sni is not None and normalize_host(server.sni) != destination.host:
        return f"the TLS server name is {server.sni}, not {destination.host}"
    return None


def install() -> None:
    mitm_internals.rewrite_requests_on_the_wire(_on_the_wire)
