"""The one place sluice touches mitmproxy's internals: private modules, undocumented attributes, patches.

mitmproxy documents an addon API — the event hooks, `ctx`, `mitmproxy.http`, `connection`, `flow`, `tls`,
`dns`, `contentviews`, `proxy.mode_specs`, `proxy.server_hooks` — and that API is used where it is needed.
Where sluice needs a say that API does not give (what is written to a client when the upstream fails, the
headers a request carries on the wire, bytes injected into an idle stream, how mitmproxy decodes a body),
it reaches into mitmproxy's protocol layers, its option store, its proxy server's connections. All of that
is here, and only here (tests/test_layers.py checks that no other addon imports a private mitmproxy module
or reads a private attribute): each piece a small function whose docstring names the mitmproxy behaviour it
relies on.

mitmproxy changes its internals without notice, even in a patch release. So an upgrade fails loudly, not
quietly in production:

- `VERIFIED_VERSIONS` names the releases the contract tests (tests/addons/test_mitm_internals.py, one test
  per behaviour relied on) passed on. Start-up under any other logs a warning naming the version and the
  tests to run (`check_startup`).
- Every class, function and method named here is looked up when this module is imported and again at
  start-up; one that is gone stops start-up with its name (`check_startup`), instead of an AttributeError
  in the middle of someone's request. Instance attributes (a layer's `request`, the proxy server's
  `connections`) cannot be looked up without an instance: their contract tests cover them.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

from mitmproxy import connection, ctx, http, optmanager

log = logging.getLogger("sluice")

# The mitmproxy releases tests/addons/test_mitm_internals.py passed on, in full.
VERIFIED_VERSIONS = ("12.3.1",)
CONTRACT_TESTS = "tests/addons/test_mitm_internals.py"

Method = Callable[..., Any]
# The type of `ctx.options` (mitmproxy documents the options, not the store that holds them).
OptManager = optmanager.OptManager

# --- Looking the internals up -------------------------------------------------------------------------------

# (module, dotted attribute path) of every internal this module uses, in the order they are looked up.
_NEEDED: list[tuple[str, str]] = []


def _resolve(module: str, path: str) -> Any:
    """`module.path` (the module itself for an empty path) in the installed mitmproxy; raises ImportError
    or AttributeError if it is gone."""
    found: Any = importlib.import_module(module)
    for name in filter(None, path.split(".")):
        found = getattr(found, name)
    return found


def _internal(module: str, path: str) -> Any:
    """An internal this module relies on, or None when this mitmproxy has no such thing (start-up then
    stops, naming it: `check_startup`)."""
    _NEEDED.append((module, path))
    try:
        return _resolve(module, path)
    except (ImportError, AttributeError):
        return None


def missing_internals() -> list[str]:
    """Each internal this module relies on that the installed mitmproxy no longer has, looked up afresh."""
    missing = []
    for module, path in _NEEDED:
        try:
            _resolve(module, path)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{path}" if path else module)
    return missing


_HTTP1 = "mitmproxy.proxy.layers.http._http1"
_HTTP2 = "mitmproxy.proxy.layers.http._http2"
_EVENTS = "mitmproxy.proxy.layers.http._events"

Http1Server = _internal(_HTTP1, "Http1Server")
_internal(_HTTP1, "Http1Server.send")
Http1Client = _internal(_HTTP1, "Http1Client")
_internal(_HTTP1, "Http1Client.send")
Http2Server = _internal(_HTTP2, "Http2Server")
_internal(_HTTP2, "Http2Server._handle_event")
_internal(_HTTP2, "Http2Server.is_open_for_us")
Http2Client = _internal(_HTTP2, "Http2Client")
_internal(_HTTP2, "Http2Client._handle_event")
RequestHeaders = _internal(_EVENTS, "RequestHeaders")
ResponseHeaders = _internal(_EVENTS, "ResponseHeaders")
ResponseData = _internal(_EVENTS, "ResponseData")
ResponseEndOfMessage = _internal(_EVENTS, "ResponseEndOfMessage")
ResponseProtocolError = _internal(_EVENTS, "ResponseProtocolError")
SendData = _internal("mitmproxy.proxy.commands", "SendData")
CloseConnection = _internal("mitmproxy.proxy.commands", "CloseConnection")
ClientTLSLayer = _internal("mitmproxy.proxy.layers.tls", "ClientTLSLayer")
_internal("mitmproxy.proxy.layers.tls", "ClientTLSLayer.send_data")
_assemble_response = _internal("mitmproxy.net.http.http1", "assemble_response")
_parse_authority = _internal("mitmproxy.net.http.url", "parse_authority")
_encoding = _internal("mitmproxy.net.encoding", "")
_internal("mitmproxy.net.encoding", "decode")
_UNSET = _internal("mitmproxy.optmanager", "unset")
_DumpMaster = _internal("mitmproxy.tools.dump", "DumpMaster")
_internal("mitmproxy.addons.errorcheck", "ErrorCheck")
_internal("mitmproxy.addons.proxyserver", "Proxyserver")
_all_hooks = _internal("mitmproxy.hooks", "all_hooks")
_internal("mitmproxy.version", "VERSION")


# --- Start-up ---------------------------------------------------------------------------------------------


class MissingInternals(Exception):
    """The installed mitmproxy lacks something sluice relies on."""

    def __init__(self, version: str, missing: list[str]) -> None:
        super().__init__(
            f"mitmproxy {version} has no {', '.join(missing)}, which sluice relies on "
            f"(addons/mitm_internals.py); install a verified mitmproxy ({', '.join(VERIFIED_VERSIONS)})"
        )
        self.missing = missing


def mitmproxy_version() -> str:
    """The installed mitmproxy's version, as `mitmdump --version` prints it."""
    return str(_resolve("mitmproxy.version", "VERSION"))


_warned_versions: set[str] = set()


def check_startup() -> None:
    """Raise MissingInternals naming each internal the installed mitmproxy lacks (fails closed: sluice does
    not start on a mitmproxy it cannot work with); log a warning, once per version, when the installed
    mitmproxy is not one the contract tests were run on."""
    version = mitmproxy_version()
    missing = missing_internals()
    if missing:
        raise MissingInternals(version, missing)
    if version not in VERIFIED_VERSIONS and version not in _warned_versions:
        _warned_versions.add(version)
        log.warning(
            "sluice: mitmproxy %s is not a version sluice was verified against (%s). sluice relies on "
            "mitmproxy internals that may have changed: run `pytest %s` against this mitmproxy before "
            "trusting it with credentials, and add the version to VERIFIED_VERSIONS in "
            "addons/mitm_internals.py once they pass.",
            version,
            ", ".join(VERIFIED_VERSIONS),
            CONTRACT_TESTS,
        )


def installable() -> bool:
    """Whether every internal is present, so the wrappers below can go on (else start-up stops anyway)."""
    return not missing_internals()


# --- Options and the master -------------------------------------------------------------------------------


def option_left_unset(options: optmanager.OptManager, name: str) -> bool:
    """Whether option `name` exists and nobody set it, not even to its default value.

    Relies on: the option store keeps its options in `OptManager._options`, each an `_Option` whose `value`
    is `optmanager.unset` until it is set (`--set name=value` sets it, whatever the value).
    """
    option = options._options.get(name)
    return option is not None and option.value is _UNSET


def deferred_options(options: optmanager.OptManager) -> Mapping[str, object]:
    """The `--set` names no addon has defined (yet), with their values.

    Relies on: mitmproxy keeps an unknown `--set` in `OptManager.deferred` instead of refusing it, in case
    an addon loaded later defines it.
    """
    deferred: Mapping[str, object] = options.deferred
    return deferred


def starting_from_command_line() -> bool:
    """Whether mitmproxy is starting from its command line (mitmdump, mitmweb, mitmproxy).

    Relies on: mitmproxy's tools add the `errorcheck` addon (which stops start-up after an error); a
    master built in a test has none.
    """
    try:
        return ctx.master.addons.get("errorcheck") is not None
    except AttributeError:  # no master yet
        return False


def is_mitmdump(master: object) -> bool:
    """Whether `master` is mitmdump's (no UI that shows flows), not mitmweb's or the console's.

    Relies on: mitmdump runs a `DumpMaster`, and mitmweb's and the console's masters are not one.
    """
    return _DumpMaster is not None and isinstance(master, _DumpMaster)


def hook_names() -> Iterator[str]:
    """The name of every event hook mitmproxy may call on an addon.

    Relies on: each hook is a `Hook` subclass that registers itself in `mitmproxy.hooks.all_hooks` under
    the name mitmproxy calls it by.
    """
    return iter(_all_hooks or {})


def parse_authority(value: str) -> tuple[str, int | None]:
    """A Host header or `:authority` as (host, port or None), in mitmproxy's own parsing; a value it
    cannot parse is kept whole (as the host).

    Relies on: `mitmproxy.net.http.url.parse_authority(value, check=False)`, which mitmproxy itself uses
    on these values.
    """
    host, port = _parse_authority(value, check=False)
    return host, port


# --- Wrapping methods mitmproxy has no hook for -------------------------------------------------------------


def patch_once(owner: Any, method: str, wrap: Callable[[Method], Method]) -> None:
    """Replace `owner.method` with `wrap(original)`, unless this `wrap` already did.

    mitmproxy reloads a changed script, and the addon it builds again must not wrap its own wrapper.
    """
    original = getattr(owner, method)
    marker = f"{wrap.__module__}.{wrap.__qualname__}"
    if getattr(original, "_sluice_patch", None) == marker:
        return
    wrapped = wrap(original)
    wrapped._sluice_patch = marker  # type: ignore[attr-defined]
    setattr(owner, method, wrapped)


# What the wrappers below consult, set by the addons that install them (the latest install wins: a reloaded
# script's functions replace the old ones without wrapping twice).
_error_page_http1: Callable[[http.Request], http.Response | None] | None = None
_error_page_http2: Callable[[str, str], http.Response | None] | None = None
_on_the_wire: Callable[[http.Request, connection.Server], http.Request | None] | None = None


def replace_error_pages(
    http1: Callable[[http.Request], http.Response | None],
    http2: Callable[[str, str], http.Response | None],
) -> None:
    """Have mitmproxy answer a request whose upstream failed before answering with a response of sluice's
    instead of its HTML error page: `http1(request)` for an HTTP/1 client, `http2(client connection id,
    error message)` for an HTTP/2 client; None keeps mitmproxy's page.

    Relies on: when the upstream fails, mitmproxy's client-side HTTP/1 layer (`Http1Server.send`) gets a
    `ResponseProtocolError` while it holds the flow's very request object (`self.request`), writes
    `make_error_response` and closes the connection, unless a response was started (`self.response`) or
    the connection cannot be written (`ConnectionState.CAN_WRITE`); its HTTP/2 layer
    (`Http2Server._handle_event`) gets that event with the stream id and the flow's error message, and
    frames `ResponseHeaders`, `ResponseData`, `ResponseEndOfMessage` events it is handed itself.
    """
    global _error_page_http1, _error_page_http2
    _error_page_http1, _error_page_http2 = http1, http2
    if installable():
        patch_once(Http1Server, "send", _error_page_over_http1)
        patch_once(Http2Server, "_handle_event", _error_page_over_http2)


def _error_page_over_http1(original: Method) -> Method:
    def send(self: Any, event: Any) -> Generator[Any, Any, None]:
        if isinstance(event, ResponseProtocolError) and self.request is not None and _error_page_http1:
            response = _error_page_http1(self.request)
            if (
                response is not None
                and not self.response
                and self.conn.state & connection.ConnectionState.CAN_WRITE
            ):
                yield SendData(self.conn, _assemble_response(response))
                yield CloseConnection(self.conn)
                return
        yield from original(self, event)

    return send


def _error_page_over_http2(original: Method) -> Method:
    def handle_event(self: Any, event: Any) -> Generator[Any, Any, None]:
        if isinstance(event, ResponseProtocolError) and _error_page_http2:
            response = _error_page_http2(self.context.client.id, event.message)
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


def rewrite_requests_on_the_wire(
    rewrite: Callable[[http.Request, connection.Server], http.Request | None],
) -> None:
    """Have mitmproxy write `rewrite(request, server connection)` upstream, when it returns a request,
    in place of the flow's request (None: the flow's own), at the moment the request head is sent.

    Relies on: mitmproxy's upstream-side HTTP/1 layer (`Http1Client.send`) and HTTP/2 layer
    (`Http2Client._handle_event`) get every request as a `RequestHeaders(stream_id, request, end_stream)`
    event, write that event's request object, and hold the server connection it is written on as
    `self.context.server`. An HTTP/3 upstream (QUIC modes only) is not wrapped.
    """
    global _on_the_wire
    _on_the_wire = rewrite
    if installable():
        patch_once(Http1Client, "send", _rewired)  # HTTP/1.1 upstreams: every request event passes here
        patch_once(Http2Client, "_handle_event", _rewired)  # HTTP/2 upstreams: likewise


def request_on_the_wire(event: Any, server: connection.Server) -> Any:
    """The event an upstream layer writes in place of `event`: a `RequestHeaders` with the request
    `_on_the_wire` gives, same stream id and end of stream; any other event unchanged."""
    if not isinstance(event, RequestHeaders) or _on_the_wire is None:
        return event
    request = _on_the_wire(event.request, server)
    return event if request is None else RequestHeaders(event.stream_id, request, event.end_stream)


def _rewired(original: Method) -> Method:
    def wrapped(self: Any, event: Any) -> Generator[Any, Any, None]:
        yield from original(self, request_on_the_wire(event, self.context.server))

    return wrapped


def wrap_content_decoding(wrap: Callable[[Method], Method]) -> None:
    """Put `wrap` around the function mitmproxy decodes every body's Content-Encoding with: what
    `Message.content` (mitmweb's views, the console, exports) decodes goes through it.

    Relies on: `Message.get_content` calls `mitmproxy.net.encoding.decode(encoded, encoding, errors)`,
    looked up on the module when it is called, and treats a ValueError from it as "cannot decode".
    """
    if installable():
        patch_once(_encoding, "decode", wrap)


# --- The connections mitmproxy's proxy server holds ---------------------------------------------------------


class ProxyConnection:
    """One client connection as mitmproxy's proxy server holds it: its transports and its layer tree."""

    def __init__(self, handler: Any) -> None:
        self._handler = handler

    def send_to_client(self, client: connection.Client, plaintext: bytes) -> None:
        """Write bytes to the client as if they came through the HTTP layer, TLS-wrapped where it is TLS.

        mitmproxy has no injection command for HTTP streams; its client TLS layer does the encryption so
        the TLS record sequence stays intact.

        Relies on: a `ClientTLSLayer`'s `send_data` yields the `SendData` commands that carry the encrypted
        bytes; `transports[connection].writer` is the stream those bytes are written to.
        """
        tls = self.client_tls_layer(client)
        commands_out = tls.send_data(plaintext) if tls is not None else [SendData(client, plaintext)]
        for command in commands_out:
            if isinstance(command, SendData):
                transport = self._handler.transports.get(command.connection)
                if transport is not None and transport.writer is not None:
                    transport.writer.write(command.data)

    def client_tls_layer(self, client: connection.Client) -> Any | None:
        """The TLS layer that speaks to this client (None for a client in the clear).

        Relies on: the handler's `layer` is the root of the layer tree (`client_tls_layer`).
        """
        return client_tls_layer(self._handler.layer, client)

    def close_server(self, server: connection.Server) -> None:
        """Close the upstream connection's stream; mitmproxy then sees the server connection closed.

        Relies on: `transports[server connection].writer` is the asyncio stream writer of that connection.
        """
        transport = self._handler.transports.get(server)
        if transport is not None and transport.writer is not None:
            with contextlib.suppress(OSError):
                transport.writer.close()


def proxy_connection(client: connection.Client) -> ProxyConnection | None:
    """The proxy server's handler of a client connection, while it is open.

    Relies on: the `proxyserver` addon keeps each open connection's handler in `connections`, by the
    client connection's id.
    """
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(client.id) if proxyserver else None
    return ProxyConnection(handler) if handler is not None else None


def client_tls_layer(root: Any, client: connection.Client) -> Any | None:
    """The TLS layer that speaks to this client, found by walking mitmproxy's layer tree.

    Relies on: layers hold their child as `layer` (NextLayer) or `child_layer` (tunnels, TLS); mode layers
    hand events on through a bound method of their child (`_handle_event`); the HTTP layer holds its
    streams' layers in `streams`; the client's TLS layer is a `ClientTLSLayer` whose `conn` is the client.
    """
    pending, seen = [root], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ClientTLSLayer) and current.conn == client:
            return current
        pending.extend(getattr(current, name, None) for name in ("layer", "child_layer"))
        # Mode layers hand events on through a bound method of their child.
        pending.append(getattr(getattr(current, "_handle_event", None), "__self__", None))
        streams = getattr(current, "streams", None)
        if isinstance(streams, dict):
            pending.extend(streams.values())
    return None
