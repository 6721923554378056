from __future__ import annotations

import pytest
from mitmproxy.connection import Server
from mitmproxy.test import tutils

from addons import wire_headers
from rules.destination import Destination

REAL = ((b"host", b"api.anthropic.com"), (b"x-api-key", b"sk-ant-REAL"))
ANTHROPIC = Destination.of("https", "api.anthropic.com", 443)


def server(
    host: str = "api.anthropic.com", port: int = 443, *, tls: bool = True, sni: str | None = None
) -> Server:
    """The upstream connection a request is about to be written on, as mitmproxy's client layer holds it."""
    connection = Server(address=(host, port))
    connection.tls = tls
    connection.sni = sni if sni is not None else (host if tls else None)
    return connection


ON_THE_RIGHT_CONNECTION = server()


def test_a_registered_request_is_sent_as_a_copy_with_the_registered_headers() -> None:
    request = tutils.treq(headers=((b"host", b"api.anthropic.com"), (b"x-api-key", b"sk-client")))
    wire_headers.send_with(request, REAL, ANTHROPIC)
    try:
        sent = wire_headers._on_the_wire(request, ON_THE_RIGHT_CONNECTION)
        assert sent is not None and sent is not request
        assert sent.headers.fields == REAL
        assert sent.raw_content is request.raw_content  # the body is not copied
        assert request.headers["x-api-key"] == "sk-client"  # the flow's request never holds the real key
    finally:
        wire_headers.forget(request)
    assert wire_headers.pending() == 0


def test_other_requests_pass_unchanged() -> None:
    registered, other = tutils.treq(), tutils.treq()
    wire_headers.send_with(registered, REAL, ANTHROPIC)
    try:
        assert wire_headers._on_the_wire(other, ON_THE_RIGHT_CONNECTION) is None
    finally:
        wire_headers.forget(registered)


def test_a_request_gone_from_memory_never_matches_a_new_one_at_the_same_address() -> None:
    request = tutils.treq()
    wire_headers.send_with(request, REAL, ANTHROPIC)
    key = id(request)
    _, fields, going_to, delivery = wire_headers._PENDING[key]
    wire_headers._PENDING[key] = (lambda: None, fields, going_to, delivery)  # type: ignore[assignment]  # as if collected
    try:
        assert wire_headers._on_the_wire(request, ON_THE_RIGHT_CONNECTION) is None
    finally:
        wire_headers.forget(request)


def test_the_copy_shares_nothing_it_could_change_back_into_the_flow() -> None:
    request = tutils.treq(headers=((b"x-api-key", b"sk-client"),))
    wire_headers.send_with(request, REAL, ANTHROPIC)
    try:
        sent = wire_headers._on_the_wire(request, ON_THE_RIGHT_CONNECTION)
        assert sent is not None
        sent.headers["x-extra"] = "added on the wire"
        sent.path = "/elsewhere"
        assert request.headers.fields == ((b"x-api-key", b"sk-client"),)
        assert request.path != "/elsewhere"
    finally:
        wire_headers.forget(request)


@pytest.mark.parametrize(
    "connection",
    [
        server("127.0.0.1", 9000),  # moved after the credential was chosen (another addon, map_remote)
        server("api.anthropic.com", 8443),  # another port
        server("api.anthropic.com", 443, tls=False),  # cleartext
        server("api.anthropic.com", 443, sni="attacker.example"),  # another name in the TLS handshake
        server("api.anthropic.com.evil.example", 443),
        Server(address=None),
        # Transparent mode: the connection the client opened, to an address it chose, under the right name.
        server("10.202.0.2", 443, sni="api.anthropic.com"),
    ],
    ids=["other-host", "other-port", "cleartext", "other-sni", "suffix-host", "no-address", "client-address"],
)
def test_a_connection_that_goes_elsewhere_gets_the_request_without_any_credential(connection: Server) -> None:
    request = tutils.treq(
        headers=(
            (b"host", b"api.anthropic.com"),
            (b"x-api-key", b"sk-client"),
            (b"Authorization", b"Bearer c"),
        )
    )
    wire_headers.send_with(request, REAL, ANTHROPIC)
    try:
        sent = wire_headers._on_the_wire(request, connection)
        assert sent is not None
        assert sent.headers.fields == ((b"host", b"api.anthropic.com"),)
        assert b"sk-ant-REAL" not in bytes(repr(sent.headers.fields), "latin-1")
    finally:
        wire_headers.forget(request)


def test_the_destination_compares_without_case_or_trailing_dot() -> None:
    request = tutils.treq(headers=((b"x-api-key", b"sk-client"),))
    wire_headers.send_with(request, REAL, ANTHROPIC)
    try:
        connection = server("API.Anthropic.COM.", 443, sni="api.anthropic.com.")
        sent = wire_headers._on_the_wire(request, connection)
        assert sent is not None
        assert sent.headers.fields == REAL
    finally:
        wire_headers.forget(request)


def test_the_delivery_says_whether_the_credential_was_written() -> None:
    request = tutils.treq(headers=((b"x-api-key", b"sk-client"),))
    delivery = wire_headers.send_with(request, REAL, ANTHROPIC)
    try:
        assert delivery.written is False  # not sent yet
        wire_headers._on_the_wire(request, server("127.0.0.1", 9000))
        assert delivery.written is False  # withheld
        wire_headers._on_the_wire(request, ON_THE_RIGHT_CONNECTION)
        assert delivery.written is True
    finally:
        wire_headers.forget(request)


def test_a_signer_runs_at_send_time_over_the_final_body_and_only_for_the_right_connection() -> None:
    request = tutils.treq(headers=((b"host", b"api.anthropic.com"), (b"authorization", b"AWS4 placeholder")))
    seen: list[bytes | None] = []

    def sign(sent: object) -> wire_headers.Fields:
        seen.append(request.raw_content)
        return ((b"host", b"api.anthropic.com"), (b"authorization", b"AWS4 real"))

    wire_headers.send_with(request, sign, ANTHROPIC)
    try:
        request.content = b"rewritten after the credential was chosen"
        assert wire_headers._on_the_wire(request, server("elsewhere.example")) is not None
        assert seen == []  # no signature is made for a connection that goes elsewhere
        sent = wire_headers._on_the_wire(request, ON_THE_RIGHT_CONNECTION)
        assert sent is not None and sent.headers["authorization"] == "AWS4 real"
        assert seen == [b"rewritten after the credential was chosen"]
        assert request.headers["authorization"] == "AWS4 placeholder"
    finally:
        wire_headers.forget(request)
