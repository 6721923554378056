from __future__ import annotations

from mitmproxy.proxy.layers.http._events import RequestData, RequestHeaders
from mitmproxy.test import tutils

from addons import wire_headers

REAL = ((b"host", b"api.anthropic.com"), (b"x-api-key", b"sk-ant-REAL"))


def test_a_registered_request_is_sent_as_a_copy_with_the_registered_headers() -> None:
    request = tutils.treq(headers=((b"host", b"api.anthropic.com"), (b"x-api-key", b"sk-client")))
    wire_headers.send_with(request, REAL)
    try:
        sent = wire_headers._on_the_wire(RequestHeaders(1, request, end_stream=False))
        assert sent.request is not request
        assert sent.request.headers.fields == REAL
        assert (sent.stream_id, sent.end_stream) == (1, False)
        assert sent.request.raw_content is request.raw_content  # the body is not copied
        assert request.headers["x-api-key"] == "sk-client"  # the flow's request never holds the real key
    finally:
        wire_headers.forget(request)
    assert wire_headers.pending() == 0


def test_other_requests_and_events_pass_unchanged() -> None:
    registered, other = tutils.treq(), tutils.treq()
    wire_headers.send_with(registered, REAL)
    try:
        event = RequestHeaders(3, other, end_stream=True)
        assert wire_headers._on_the_wire(event) is event
        data = RequestData(3, b"body")
        assert wire_headers._on_the_wire(data) is data
    finally:
        wire_headers.forget(registered)


def test_a_request_gone_from_memory_never_matches_a_new_one_at_the_same_address() -> None:
    request = tutils.treq()
    wire_headers.send_with(request, REAL)
    key = id(request)
    _, fields = wire_headers._PENDING[key]
    wire_headers._PENDING[key] = (lambda: None, fields)  # type: ignore[assignment]  # as if collected
    try:
        event = RequestHeaders(1, request, end_stream=True)
        assert wire_headers._on_the_wire(event) is event
    finally:
        wire_headers.forget(request)


def test_the_copy_shares_nothing_it_could_change_back_into_the_flow() -> None:
    request = tutils.treq(headers=((b"x-api-key", b"sk-client"),))
    wire_headers.send_with(request, REAL)
    try:
        sent = wire_headers._on_the_wire(RequestHeaders(1, request, end_stream=False)).request
        sent.headers["x-extra"] = "added on the wire"
        sent.path = "/elsewhere"
        assert request.headers.fields == ((b"x-api-key", b"sk-client"),)
        assert request.path != "/elsewhere"
    finally:
        wire_headers.forget(request)
