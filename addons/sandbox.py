"""A sandbox's egress policy: with `sluice_sandbox` set (by `sluice sandbox`, state/sandbox.py), every
connection out of the sandbox goes to a host by its name, resolved by sluice, or nowhere.

The sandboxed command's traffic arrives in transparent mode: the address it connects to is whatever it (or
the DNS it asked) chose, so it decides nothing. The name does: the TLS server name, or the Host of a
cleartext request. Provider hosts (configured `[[upstreams]]` on their port, and the providers' own API
hosts on 443) are intercepted, credential-swapped and metered as usual; names on `[sandbox] allow` pass
through untouched (their TLS is not intercepted, so they need no CA), connected to by name; everything else
is refused, logged and recorded in `sandbox_events`. The sandbox's DNS is answered here too, for the names
it may reach only, and never asks another resolver: a name the policy does not know gets NXDOMAIN, so a
lookup cannot carry data out either.

Fails closed: `server_connect` is the last word for every connection sluice opens on the sandbox's behalf
(HTTP, passed-through TLS, raw TCP, DNS): one that does not go by name to a permitted host and port is
never opened.
"""

from __future__ import annotations

import ipaddress
import logging
import uuid
from collections import OrderedDict
from datetime import UTC, datetime

from mitmproxy import connection, ctx, dns, exceptions, http, tls
from mitmproxy.proxy.mode_specs import TransparentMode
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from addons import mitm_internals
from addons.core import SluiceCore
from rules.destination import normalize_host
from rules.egress import is_allowed, names
from rules.providers import provider_for_host
from state.writer import SandboxEvent

log = logging.getLogger("sluice")

# Client connections whose refusal is already recorded (so the connection sluice then declines to open is
# not recorded a second time); bounded, oldest forgotten first.
RECORDED_MAX = 4096


class Sandbox:
    security = True  # addons/chain.py: a failure here fails closed

    def __init__(self, core: SluiceCore) -> None:
        self.core = core
        self.active = False
        self._recorded: OrderedDict[str, None] = OrderedDict()

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "sluice_sandbox",
            bool,
            False,
            "Confine a sandbox (set by `sluice sandbox`): connect only by name, to provider hosts and the "
            "config's [sandbox] allow list; answer DNS for those names only; refuse and record the rest.",
        )

    def configure(self, updated: set[str]) -> None:
        self.active = bool(ctx.options.sluice_sandbox)
        strategy = ctx.options.connection_strategy if "connection_strategy" in ctx.options else "lazy"
        if self.active and strategy != "lazy":
            # Eagerly, mitmproxy would open a connection to the address the command chose before the
            # name is known; this addon would refuse it and with it the command's connection.
            raise exceptions.OptionsError("sluice_sandbox: needs connection_strategy=lazy")

    # The policy.

    def provider(self, host: str, port: int) -> bool:
        """Whether `host:port` is a provider host sluice intercepts and meters (never passed through)."""
        host = normalize_host(host)
        upstream = self.core.upstream_for(host)
        if upstream is not None:
            return port == upstream.port
        return provider_for_host(host) is not None and port == 443

    def permitted(self, host: str, port: int) -> bool:
        """Whether sluice may open a connection to `host:port` for the sandbox (a name, never an address)."""
        return self.provider(host, port) or is_allowed(self.core.config.sandbox.allow_entries, host, port)

    def known(self, host: str) -> bool:
        """Whether the policy names `host` on some port (its DNS lookups are answered)."""
        host = normalize_host(host)
        if self.core.upstream_for(host) is not None or provider_for_host(host) is not None:
            return True
        return names(self.core.config.sandbox.allow_entries, host)

    # Hooks.

    def dns_request(self, flow: dns.DNSFlow) -> None:
        if not self.active or flow.response is not None:
            return
        question = flow.request.question
        if question is None:
            flow.response = flow.request.fail(dns.response_codes.FORMERR)
            return
        if not self.known(question.name):
            self._refuse(
                "dns", question.name, 0, flow.client_conn, "the name is not on the sandbox's allow list"
            )
            flow.response = flow.request.fail(dns.response_codes.NXDOMAIN)
            return
        flow.response = flow.request.succeed(self._answers(question, flow.client_conn))

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        """Names on the allow list pass through untouched, by name; provider hosts are intercepted."""
        if not self.active or data.context.server.address is None:
            return
        sni, port = data.client_hello.sni, data.context.server.address[1]
        if sni and self.provider(sni, port):
            return  # intercepted and metered; `request` connects by name
        data.ignore_connection = True  # passed through, or refused: either way no certificate is minted
        if sni and self.permitted(sni, port):
            data.context.server.address = (normalize_host(sni), port)
            return
        where = sni or str(data.context.server.address[0])
        self._refuse("connection", where, port, data.context.client, "not an allowed host and port")

    def request(self, flow: http.HTTPFlow) -> None:
        if not self.active or flow.response is not None or not flow.live:
            return
        if not isinstance(flow.client_conn.proxy_mode, TransparentMode):
            return
        name = self._named(flow)
        port = flow.request.port
        if name is not None and self.permitted(name, port):
            self.core.repoint(flow, normalize_host(name))
            return
        where = name or flow.request.host
        reason = f"{where}:{port} is not an allowed host and port"
        self._refuse("request", where, port, flow.client_conn, reason)
        flow.response = http.Response.make(
            403, f"sluice sandbox: {reason}\n".encode(), {"content-type": "text/plain; charset=utf-8"}
        )
        self.core.answered(flow, f"refused: {reason}")

    def server_connect(self, data: ServerConnectionHookData) -> None:
        """The backstop: no connection is opened for the sandbox unless it goes by name where it may."""
        if not self.active or data.server.address is None:
            return
        host, port = str(data.server.address[0]), data.server.address[1]
        if self.permitted(host, port):
            return
        data.server.error = f"sluice sandbox: {host}:{port} is not an allowed host and port"
        if data.client.id in self._recorded:
            del self._recorded[data.client.id]
            return  # its refusal is recorded already
        self._refuse("connection", host, port, data.client, "not an allowed host and port")

    # Helpers.

    @staticmethod
    def _named(flow: http.HTTPFlow) -> str | None:
        """The name the request asks for: the TLS server name, else its Host."""
        if flow.client_conn.tls:
            return flow.client_conn.sni
        host_header = flow.request.host_header
        if not host_header:
            return None
        host, _ = mitm_internals.parse_authority(host_header)
        return host

    @staticmethod
    def _answers(question: dns.Question, client: connection.Client) -> list[dns.ResourceRecord]:
        """For a name the sandbox may reach: the address its DNS was asked at, which leads back to sluice
        (the connection is then made by name, so the address carries no meaning of its own). IPv4 only:
        the sandbox has no IPv6."""
        if question.type != dns.types.A:
            return []
        address = ipaddress.ip_address(client.sockname[0])
        return [
            dns.ResourceRecord(
                name=question.name, type=dns.types.A, class_=question.class_, ttl=60, data=address.packed
            )
        ]

    def _refuse(self, kind: str, host: str, port: int, client: connection.Client, reason: str) -> None:
        log.warning(
            "sluice sandbox: refused %s %s:%d from %s: %s", kind, host, port, client.peername[0], reason
        )
        self._recorded[client.id] = None
        while len(self._recorded) > RECORDED_MAX:
            self._recorded.popitem(last=False)
        row = {
            "id": str(uuid.uuid4()),
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "kind": kind,
            "host": host,
            "port": port or None,
            "client_address": str(client.peername[0]),
            "reason": reason,
        }
        self.core.record(SandboxEvent(row))
