"""Where a request really goes, and whether a credential may follow it there.

A request names its server twice: once where the client's connection is sent (the CONNECT target, an
absolute-form URL, the reverse-proxy spec: the address mitmproxy connects to) and once inside the request
(`Host`, HTTP/2's `:authority`). Only the first decides where bytes go; the second is whatever the client
wrote. Every security decision (which credential, whether the client-key gate applies, which header policy)
is keyed on the first, and the second must agree with it before a credential is involved at all: a request
whose own authority names another server is answered 421 Misdirected Request (RFC 9110 §15.5.20) instead
of being sent on.

Pure: the caller reads the flow (and parses authorities with mitmproxy's own parser) and passes plain
values in. Host names compare case-insensitively and without a trailing dot (RFC 1034 §3.1: `example.com.`
is the same absolute name).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_PORTS = {"https": 443, "http": 80}


def normalize_host(name: str) -> str:
    """A host name in one spelling: lower-case, no trailing dot, IPv6 literals without brackets."""
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name.rstrip(".")


@dataclass(frozen=True, slots=True)
class Destination:
    """The server a request is sent to: scheme (https = over TLS), normalized host name, port."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, scheme: str, host: str, port: int) -> Destination:
        return cls(scheme.lower(), normalize_host(host), port)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        """`host`, or `host:port` when the port is not the scheme's default (as rows and messages show it)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS.get(self.scheme) == self.port else f"{host}:{self.port}"


def misdirection(
    destination: Destination, stated: Iterable[tuple[str, int | None]], server_name: str | None = None
) -> str | None:
    """Why the request's own authorities disagree with its destination, or None when they all agree.

    `stated` holds every authority the request carries (each Host header, HTTP/2's `:authority`, an
    absolute-form target) as (host, port or None). A missing port means the scheme's default. A request
    that states none (HTTP/1.0) agrees. More than one differing value is a disagreement in itself: RFC 9112
    §3.2 makes a request with several Host headers invalid.

    `server_name` is the TLS server name (SNI) the upstream connection will carry, when the client chose
    it: on a shared front end (a CDN) the SNI, not the address, picks the server that answers.
    """
    if server_name is not None and normalize_host(server_name) != destination.host:
        return f"the TLS server name is {server_name} but the connection goes to {destination.authority}"
    seen: set[tuple[str, int]] = set()
    for host, port in stated:
        seen.add(
            (normalize_host(host), port if port is not None else DEFAULT_PORTS.get(destination.scheme, 0))
        )
    for host, port in sorted(seen):
        if (host, port) != (destination.host, destination.port):
            shown = host if port == DEFAULT_PORTS.get(destination.scheme) else f"{host}:{port}"
            return f"the request names {shown} but its connection goes to {destination.authority}"
    return None


def credential_refusal(destination: Destination, upstream_host: str, upstream_port: int) -> str | None:
    """Why a credential configured for `upstream_host:upstream_port` may not go to `destination`, or None.

    Fails closed: only over TLS, only to the configured host and port. A cleartext request would put the
    credential on the network in the clear; another port is another server, whoever runs it.
    """
    if destination.host != normalize_host(upstream_host):
        return f"{destination.authority} is not {upstream_host}"
    if not destination.tls:
        return (
            f"credentials for {upstream_host} are only sent over TLS (https), and this request is cleartext"
        )
    if destination.port != upstream_port:
        return (
            f"credentials for {upstream_host} are only sent to port {upstream_port}, not {destination.port}"
        )
    return None
