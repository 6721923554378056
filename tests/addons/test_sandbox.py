from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mitmproxy import dns, exceptions, tls
from mitmproxy.connection import Server
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow, tutils

from addons.core import SluiceCore
from addons.sandbox import Sandbox
from tests.addons.test_confine import CONFIG as CONFINE_CONFIG

# The confinement tests' credential hosts (api.anthropic.com, gateway.internal:8443), and an allow list.
CONFIG = (
    CONFINE_CONFIG
    + """
[sandbox]
allow = ["pypi.org", "github.com:443", "*.npmjs.org"]
"""
)
HOST_SIDE = "10.201.0.1"  # the sandbox's DNS and proxy address, on the host side of its link
AGENT = "10.201.0.2"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[Sandbox, SluiceCore, Path]]:
    config = tmp_path / "sluice.toml"
    config.write_text(CONFIG)
    core = SluiceCore()
    part = Sandbox(core)
    with taddons.context(core, part) as tctx:
        db = tmp_path / "sluice.db"
        tctx.configure(core, sluice_config=str(config), sluice_db=str(db))
        tctx.configure(part, sluice_sandbox=True)
        yield part, core, db
        core.done()


def events(core: SluiceCore, db: Path) -> list[tuple[Any, ...]]:
    assert core.writer is not None and core.writer.flush(5)
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "select kind, host, port, client_address from sandbox_events order by at"
        ).fetchall()


def client(**fields: Any) -> Any:
    conn = tflow.tclient_conn()
    conn.peername, conn.sockname = (AGENT, 40000), (HOST_SIDE, 8080)
    conn.proxy_mode = ProxyMode.parse("transparent")
    for name, value in fields.items():
        setattr(conn, name, value)
    return conn


def test_only_provider_hosts_and_allowed_names_on_their_ports_are_permitted(sandbox) -> None:  # type: ignore[no-untyped-def]
    part, _, _ = sandbox
    assert part.provider("api.anthropic.com", 443) and not part.provider("api.anthropic.com", 80)
    assert part.provider("gateway.internal", 8443) and not part.provider("gateway.internal", 443)
    assert part.provider("api.openai.com", 443)  # a provider's own API: metered, even without a credential
    assert part.permitted("pypi.org", 80) and part.permitted("github.com", 443)
    assert not part.permitted("github.com", 22) and not part.permitted("evil.example", 443)
    assert not part.permitted(HOST_SIDE, 443) and not part.permitted("93.184.216.34", 443)


@pytest.mark.parametrize(
    ("name", "kind", "answer"),
    [
        ("api.anthropic.com", dns.types.A, [HOST_SIDE]),
        ("registry.npmjs.org.", dns.types.A, [HOST_SIDE]),
        ("pypi.org", dns.types.AAAA, []),  # no IPv6 in the sandbox
        ("pypi.org", dns.types.HTTPS, []),
    ],
)
def test_dns_answers_names_the_policy_knows_with_the_sandboxs_own_address(
    sandbox, name, kind, answer
) -> None:  # type: ignore[no-untyped-def]
    part, core, db = sandbox
    flow = tflow.tdnsflow(client_conn=client(), req=tutils.tdnsreq(questions=[dns.Question(name, kind, 1)]))
    part.dns_request(flow)
    assert flow.response is not None and flow.response.response_code == dns.response_codes.NOERROR
    assert [str(record) for record in flow.response.answers] == answer
    assert events(core, db) == []


def test_dns_for_any_other_name_is_nxdomain_asks_no_one_and_is_recorded(sandbox) -> None:  # type: ignore[no-untyped-def]
    part, core, db = sandbox
    question = dns.Question("secret-data.evil.example", dns.types.A, 1)
    flow = tflow.tdnsflow(client_conn=client(), req=tutils.tdnsreq(questions=[question]))
    part.dns_request(flow)
    assert flow.response is not None and flow.response.response_code == dns.response_codes.NXDOMAIN
    assert events(core, db) == [("dns", "secret-data.evil.example", None, AGENT)]


def hello(sni: str | None, address: tuple[str, int]) -> tls.ClientHelloData:
    context = Context(client(), None)  # type: ignore[arg-type]
    context.server = Server(address=address)
    return tls.ClientHelloData(context, SimpleNamespace(sni=sni))  # type: ignore[arg-type]


def test_a_provider_host_is_intercepted(sandbox) -> None:  # type: ignore[no-untyped-def]
    part, _, _ = sandbox
    data = hello("api.anthropic.com", ("10.9.9.9", 443))
    part.tls_clienthello(data)
    assert data.ignore_connection is False  # request() then connects by name (and confine for credentials)


def test_an_allowed_name_passes_through_to_the_name_not_the_clients_address(sandbox) -> None:  # type: ignore[no-untyped-def]
    part, core, db = sandbox
    data = hello("GitHub.com", ("10.9.9.9", 443))
    part.tls_clienthello(data)
    assert data.ignore_connection is True
    assert data.context.server.address == ("github.com", 443)
    assert events(core, db) == []


@pytest.mark.parametrize(
    ("sni", "address", "recorded"),
    [
        ("evil.example", ("10.9.9.9", 443), ("connection", "evil.example", 443, AGENT)),
        ("github.com", ("10.9.9.9", 22), ("connection", "github.com", 22, AGENT)),  # another port
        (None, ("10.9.9.9", 443), ("connection", "10.9.9.9", 443, AGENT)),  # no name at all
    ],
)
def test_anything_else_is_never_intercepted_never_connected_and_recorded_once(  # type: ignore[no-untyped-def]
    sandbox, sni, address, recorded
) -> None:
    part, core, db = sandbox
    data = hello(sni, address)
    part.tls_clienthello(data)
    assert data.ignore_connection is True  # no certificate minted for it
    assert data.context.server.address == address
    # The passed-through connection then meets the backstop, which does not open it.
    hook = ServerConnectionHookData(data.context.server, data.context.client)
    part.server_connect(hook)
    assert hook.server.error is not None and "not an allowed host and port" in hook.server.error
    assert events(core, db) == [recorded]


def test_the_backstop_refuses_every_connection_not_made_by_a_permitted_name(sandbox) -> None:  # type: ignore[no-untyped-def]
    part, core, db = sandbox
    for address, refused in [
        (("api.anthropic.com", 443), False),
        (("pypi.org", 443), False),
        (("127.0.0.1", 53), True),  # the DNS mode's reverse target: never asked
        (("10.9.9.9", 443), True),
        (("api.anthropic.com", 80), True),
    ]:
        hook = ServerConnectionHookData(Server(address=address), client())
        part.server_connect(hook)
        assert (hook.server.error is not None) is refused, address
    assert [event[:3] for event in events(core, db)] == [
        ("connection", "127.0.0.1", 53),
        ("connection", "10.9.9.9", 443),
        ("connection", "api.anthropic.com", 80),
    ]


def http_flow(scheme: str, address: str, port: int, host_header: str, sni: str | None = None) -> Any:
    request = tutils.treq(scheme=scheme, host=address, port=port, headers=((b"Host", host_header.encode()),))
    flow = tflow.tflow(req=request, client_conn=client(tls=scheme == "https", sni=sni))
    return flow


def test_requests_go_by_name_to_permitted_hosts(sandbox) -> None:  # type: ignore[no-untyped-def]
    part, _, _ = sandbox
    cleartext = http_flow("http", "10.9.9.9", 80, "PyPI.org")
    part.request(cleartext)
    assert cleartext.response is None and cleartext.request.host == "pypi.org"
    metered = http_flow("https", "10.9.9.9", 443, "api.openai.com", sni="api.openai.com")
    part.request(metered)
    assert metered.response is None and metered.request.host == "api.openai.com"


def test_a_request_to_anything_else_is_answered_403_and_recorded(sandbox) -> None:  # type: ignore[no-untyped-def]
    part, core, db = sandbox
    flow = http_flow("http", "10.9.9.9", 80, "evil.example")
    part.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert b"evil.example:80 is not an allowed host and port" in (flow.response.content or b"")
    assert events(core, db) == [("request", "evil.example", 80, AGENT)]


def test_a_metered_call_refused_or_repointed_has_its_record_say_so(sandbox) -> None:  # type: ignore[no-untyped-def]
    part, core, _ = sandbox
    refused = http_flow("http", "10.9.9.9", 80, "evil.example")
    repointed = http_flow("https", "10.9.9.9", 443, "api.openai.com", sni="api.openai.com")
    for flow in (refused, repointed):
        flow.request.method, flow.request.path = "POST", "/v1/chat/completions"
        flow.live = True
        core.request(flow)  # the core creates the record first, where the connection was headed
        part.request(flow)
    assert core.calls[refused.id].answered_locally
    assert core.calls[refused.id].notes == ["refused: evil.example:80 is not an allowed host and port"]
    assert core.calls[repointed.id].host == "api.openai.com" and not core.calls[repointed.id].answered_locally


def test_nothing_is_touched_outside_a_sandbox(tmp_path: Path) -> None:
    from mitmproxy.addons.proxyserver import Proxyserver

    core = SluiceCore()
    part = Sandbox(core)
    with taddons.context(Proxyserver(), core, part) as tctx:
        tctx.configure(core, sluice_db=str(tmp_path / "sluice.db"))
        flow = http_flow("http", "10.9.9.9", 80, "evil.example")
        part.request(flow)
        hook = ServerConnectionHookData(Server(address=("10.9.9.9", 443)), client())
        part.server_connect(hook)
        assert flow.response is None and hook.server.error is None
        tctx.options.update(connection_strategy="eager")
        with pytest.raises(exceptions.OptionsError, match="connection_strategy=lazy"):
            tctx.configure(part, sluice_sandbox=True)
        core.done()
