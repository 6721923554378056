"""Confinement: a request involving a host sluice holds credentials for goes exactly there, or nowhere.

Runs first on every request (after the core, which only creates its call record). Where the request's
connection really goes (addons/core.py `destination`) and what the request itself names (each Host header,
HTTP/2's `:authority`, an absolute-form target) must agree whenever either side is a host sluice swaps
credentials for; and a credential host is reached only over TLS on its configured port. Anything else is
answered here, in the provider's envelope, and nothing is sent upstream: 421 Misdirected Request (RFC 9110
§15.5.20) for a disagreement, 403 for cleartext or another port. Fails closed. Traffic that involves no
credential host passes untouched.

In transparent mode the connection's address is whatever the client (or the DNS it asked) chose, so it is
never trusted with a credential: a request that names a credential host (by its TLS server name or its
Host) is re-pointed at that host's configured name before anything else looks at it, and mitmproxy then
connects by that name, resolved by sluice itself; the checks above then hold as in every other mode.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy.mode_specs import ReverseMode, TransparentMode
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from addons import mitm_internals
from addons.core import SluiceCore, destination, speaks
from rules.destination import credential_refusal, misdirection, normalize_host

log = logging.getLogger("sluice")


def stated_authorities(request: http.Request) -> list[tuple[str, int | None]]:
    """Every server the request names itself, as (host, port or None), in mitmproxy's own parsing.

    A value mitmproxy cannot parse is kept whole, as a host no destination equals.
    """
    values = list(request.headers.get_all("host"))
    if request.authority:  # HTTP/2 and HTTP/3 `:authority`, or an absolute-form target inside a tunnel
        values.append(request.authority)
    return [mitm_internals.parse_authority(value) for value in values]


def upstream_server_name(flow: http.HTTPFlow) -> str | None:
    """The TLS server name mitmproxy will send upstream, where the client chose it.

    In regular and upstream-proxy modes mitmproxy reuses the client's SNI for its own handshake upstream
    (its tlsconfig addon: `server.sni = client.sni or address`); reverse mode names the spec's host itself,
    unless it keeps the client's Host header, where the client's SNI is used again.
    """
    keeps_host = "keep_host_header" in ctx.options and ctx.options.keep_host_header
    if isinstance(flow.client_conn.proxy_mode, ReverseMode) and not keeps_host:
        return None
    return flow.client_conn.sni


def connect_by_name(flow: http.HTTPFlow, stated: list[tuple[str, int | None]], core: SluiceCore) -> None:
    """In transparent mode, send a request that names a credential host to that host's name, never to the
    address the client's connection was headed for.

    The client's TLS server name is read first, then the request's own authorities; the first that is a
    host sluice swaps credentials for becomes the request's host (scheme and port stay the connection's, so
    cleartext or another port is still refused by `Confinement.request`, and a disagreeing Host or server
    name is still 421). Only `request.data.host` changes: the client's headers stay as it wrote them.
    """
    if not isinstance(flow.client_conn.proxy_mode, TransparentMode):
        return
    names = [flow.client_conn.sni] if flow.client_conn.tls and flow.client_conn.sni else []
    names += [host for host, _ in stated]
    upstream = next((u for name in names if (u := core.swapping_upstream(name)) is not None), None)
    if upstream is not None and normalize_host(flow.request.host) != upstream.host:
        log.info(
            "sluice: flow %s: %s is reached by its name, not at %s where the client's connection went",
            flow.id,
            upstream.host,
            flow.request.host,
        )
        core.repoint(flow, upstream.host)


class Confinement:
    security = True  # addons/chain.py: a failure here fails closed (where a credential host is reached)

    def __init__(self, core: SluiceCore) -> None:
        self.core = core

    def configure(self, updated: set[str]) -> None:
        # mitmproxy streams a request body over `stream_large_bodies` upstream from its `requestheaders`,
        # or from the middle of its body, without the `request` hooks that check it: such a request would
        # leave before confinement, the gate, the header policy and the budget have seen it.
        if not {"sluice_config", "stream_large_bodies"} & updated or not ctx.options.stream_large_bodies:
            return
        swapping = [u.host for u in self.core.config.upstreams if u.swaps]
        if swapping:
            raise exceptions.OptionsError(
                "stream_large_bodies: sluice cannot check a streamed request before it leaves, and swaps "
                f"credentials for {', '.join(swapping)}; unset stream_large_bodies"
            )

    def server_connect(self, data: ServerConnectionHookData) -> None:
        """A connection to a credential host names that host in its TLS handshake, whatever the client sent.

        On a shared front end (a CDN) the server name, not the address, picks who answers; mitmproxy would
        otherwise reuse the client's. `request` refuses such a request already; this holds for any other.
        """
        server = data.server
        if server.address is None or server.sni is None:
            return
        host = normalize_host(str(server.address[0]))
        if self.core.swapping_upstream(host) is not None and normalize_host(server.sni) != host:
            log.warning("sluice: upstream TLS server name %s replaced by %s", server.sni, host)
            server.sni = host

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live:
            return
        stated = stated_authorities(flow.request)
        connect_by_name(flow, stated, self.core)
        going_to = destination(flow)
        upstream = self.core.swapping_upstream(going_to.host)
        named = [u for host, _ in stated if (u := self.core.swapping_upstream(host)) is not None]
        if upstream is None and not named:
            return
        status, reason = 421, misdirection(going_to, stated, upstream_server_name(flow))
        if reason is None and upstream is not None:
            status, reason = 403, credential_refusal(going_to, upstream.host, upstream.port)
        if reason is None:
            return
        self.core.answer(
            flow,
            status,
            f"sluice: {reason}; the request was not sent",
            {"x-should-retry": "false"},
            f"refused: {reason}",
            speaks(upstream or named[0]),
        )
        log.warning(
            "sluice: flow %s: refused %s %s: %s", flow.id, flow.request.method, going_to.authority, reason
        )
