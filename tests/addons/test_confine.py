from __future__ import annotations

import json
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from addons.confine import Confinement, stated_authorities, upstream_server_name
from addons.core import SluiceCore

CONFIG = """
[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["sk-ant-literal-for-tests"]

[[upstreams]]
host = "gateway.internal:8443"
provider = "openai"
keys = ["gw-literal-for-tests"]

[[upstreams]]
host = "recorded.example"
provider = "openai"
"""


@pytest.fixture
def confine(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = tmp_path / "sluice.toml"
    config.write_text(CONFIG)
    core = SluiceCore()
    with taddons.context(core) as tctx:
        tctx.configure(core, sluice_config=str(config), sluice_db=str(tmp_path / "sluice.db"))
        yield Confinement(core)
        core.done()


def flow(
    scheme: str, host: str, port: int, *, headers: tuple[tuple[bytes, bytes], ...], authority: str = ""
) -> http.HTTPFlow:
    request = tutils.treq(scheme=scheme, host=host, port=port, authority=authority, headers=headers)
    request.path = "/v1/messages"
    f = tflow.tflow(req=request)
    f.client_conn.sni = None
    return f


@pytest.mark.parametrize(
    ("scheme", "host", "port", "headers", "authority"),
    [
        ("https", "api.anthropic.com", 443, ((b"Host", b"api.anthropic.com"),), ""),
        ("https", "api.anthropic.com", 443, ((b"Host", b"API.anthropic.com.:443"),), ""),
        ("https", "api.anthropic.com", 443, (), ""),  # HTTP/1.0, no Host
        ("https", "gateway.internal", 8443, ((b"Host", b"gateway.internal:8443"),), ""),
        ("http", "example.org", 80, ((b"Host", b"example.org"),), ""),  # no credential host involved
        ("http", "recorded.example", 80, ((b"Host", b"elsewhere.example"),), ""),  # configured, no credential
    ],
)
def test_requests_that_go_where_they_say_pass(confine, scheme, host, port, headers, authority) -> None:  # type: ignore[no-untyped-def]
    f = flow(scheme, host, port, headers=headers, authority=authority)
    confine.request(f)
    assert f.response is None


@pytest.mark.parametrize(
    ("scheme", "host", "port", "headers", "authority", "status", "reason"),
    [
        (
            "http",
            "127.0.0.1",
            9000,
            ((b"Host", b"api.anthropic.com"),),
            "",
            421,
            "the request names api.anthropic.com but its connection goes to 127.0.0.1:9000",
        ),
        (
            "https",
            "api.anthropic.com",
            443,
            ((b"Host", b"api.anthropic.com"),),
            "evil.example",  # HTTP/2 :authority, or an absolute-form target inside a tunnel
            421,
            "the request names evil.example",
        ),
        (
            "https",
            "api.anthropic.com",
            443,
            ((b"Host", b"api.anthropic.com"), (b"Host", b"evil.example")),
            "",
            421,
            "the request names evil.example",
        ),
        (
            "http",
            "api.anthropic.com",
            80,
            ((b"Host", b"api.anthropic.com"),),
            "",
            403,
            "only sent over TLS",
        ),
        (
            "https",
            "gateway.internal",
            443,
            ((b"Host", b"gateway.internal"),),
            "",
            403,
            "only sent to port 8443, not 443",
        ),
    ],
)
def test_requests_involving_a_credential_host_elsewhere_are_answered_here(  # type: ignore[no-untyped-def]
    confine, scheme, host, port, headers, authority, status, reason
) -> None:
    f = flow(scheme, host, port, headers=headers, authority=authority)
    confine.request(f)
    assert f.response is not None and f.response.status_code == status
    assert reason in json.loads(f.response.content or b"")["error"]["message"]


def test_the_clients_tls_server_name_counts_except_in_reverse_mode(confine) -> None:  # type: ignore[no-untyped-def]
    f = flow("https", "api.anthropic.com", 443, headers=((b"Host", b"api.anthropic.com"),))
    f.client_conn.sni = "evil.example"
    assert upstream_server_name(f) == "evil.example"
    confine.request(f)
    assert f.response is not None and f.response.status_code == 421
    f = flow("https", "api.anthropic.com", 443, headers=((b"Host", b"api.anthropic.com"),))
    f.client_conn.sni = "proxy.local"
    f.client_conn.proxy_mode = ProxyMode.parse("reverse:https://api.anthropic.com")
    assert upstream_server_name(f) is None  # mitmproxy sends the spec's host as SNI itself
    confine.request(f)
    assert f.response is None


def test_every_stated_authority_is_read_with_mitmproxys_parser() -> None:
    request = tutils.treq(
        authority="api.anthropic.com:443", headers=((b"Host", b"a.example"), (b"host", b"b:x"))
    )
    assert stated_authorities(request) == [("a.example", None), ("b:x", None), ("api.anthropic.com", 443)]


def test_a_connection_to_a_credential_host_names_it_in_the_tls_handshake(confine) -> None:  # type: ignore[no-untyped-def]
    from mitmproxy.connection import Client, Server
    from mitmproxy.proxy.server_hooks import ServerConnectionHookData

    client = Client(peername=("127.0.0.1", 5000), sockname=("127.0.0.1", 8080))
    chosen_by_the_client = Server(address=("api.anthropic.com", 443), sni="attacker.example")
    confine.server_connect(ServerConnectionHookData(chosen_by_the_client, client))
    assert chosen_by_the_client.sni == "api.anthropic.com"
    elsewhere = Server(address=("example.org", 443), sni="other.example")
    confine.server_connect(ServerConnectionHookData(elsewhere, client))
    assert elsewhere.sni == "other.example"  # no credential involved: mitmproxy's choice stands


def test_streamed_request_bodies_cannot_be_combined_with_credential_swap(tmp_path: Path) -> None:
    from mitmproxy import exceptions
    from mitmproxy.addons.proxyserver import Proxyserver

    config = tmp_path / "sluice.toml"
    config.write_text(CONFIG)
    core = SluiceCore()
    confine = Confinement(core)
    with taddons.context(Proxyserver(), core, confine) as tctx:
        tctx.configure(core, sluice_config=str(config), sluice_db=str(tmp_path / "sluice.db"))
        with pytest.raises(exceptions.OptionsError, match="unset stream_large_bodies"):
            tctx.configure(confine, stream_large_bodies="1m")
        core.done()


def transparent_flow(
    scheme: str, address: str, port: int, *, sni: str | None, headers: tuple[tuple[bytes, bytes], ...]
) -> http.HTTPFlow:
    """A request as transparent mode makes it: its host is the address the client's connection went to."""
    f = flow(scheme, address, port, headers=headers)
    f.client_conn.proxy_mode = ProxyMode.parse("transparent")
    f.client_conn.sni = sni
    f.client_conn.tls = scheme == "https"
    return f


def test_transparent_mode_reaches_a_credential_host_by_its_name_never_the_clients_address(confine) -> None:  # type: ignore[no-untyped-def]
    f = transparent_flow(
        "https", "10.77.0.2", 443, sni="api.anthropic.com", headers=((b"Host", b"api.anthropic.com"),)
    )
    confine.request(f)
    assert f.response is None
    assert (f.request.host, f.request.port, f.request.scheme) == ("api.anthropic.com", 443, "https")
    assert f.request.headers["Host"] == "api.anthropic.com"  # the client's own request is left as it was


@pytest.mark.parametrize(
    ("scheme", "port", "sni", "headers", "status", "reason"),
    [
        ("https", 443, "api.anthropic.com", ((b"Host", b"evil.example"),), 421, "names evil.example"),
        (
            "https",
            443,
            "evil.example",
            ((b"Host", b"api.anthropic.com"),),
            421,
            "server name is evil.example",
        ),
        ("https", 443, "api.anthropic.com", ((b"Host", b"gateway.internal:8443"),), 421, "names gateway"),
        ("http", 80, None, ((b"Host", b"api.anthropic.com"),), 403, "only sent over TLS"),
        ("https", 8443, "api.anthropic.com", ((b"Host", b"api.anthropic.com:8443"),), 403, "port 443, not"),
    ],
)
def test_transparent_mode_keeps_every_other_confinement_rule(  # type: ignore[no-untyped-def]
    confine, scheme, port, sni, headers, status, reason
) -> None:
    f = transparent_flow(scheme, "10.77.0.2", port, sni=sni, headers=headers)
    confine.request(f)
    assert f.response is not None and f.response.status_code == status
    assert reason in json.loads(f.response.content or b"")["error"]["message"]


def test_transparent_mode_leaves_hosts_without_credentials_where_the_client_sent_them(confine) -> None:  # type: ignore[no-untyped-def]
    f = transparent_flow("https", "10.77.0.2", 443, sni="example.org", headers=((b"Host", b"example.org"),))
    confine.request(f)
    assert f.response is None and f.request.host == "10.77.0.2"
