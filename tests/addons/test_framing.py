from __future__ import annotations

import pytest
from mitmproxy.test import tflow, tutils

from addons.framing import Framing


def request_flow(http_version: bytes, method: bytes, content: bytes, *headers: tuple[bytes, bytes]):  # type: ignore[no-untyped-def]
    request = tutils.treq(method=method, http_version=http_version, content=content, headers=())
    request.headers.fields = tuple(headers)
    return tflow.tflow(req=request)


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/3"])
def test_an_http2_or_http3_body_without_a_length_gets_one(version: bytes) -> None:
    flow = request_flow(version, b"POST", b'{"model": "m"}', (b"content-type", b"application/json"))
    Framing().request(flow)
    assert flow.request.headers["content-length"] == "14"
    assert flow.request.raw_content == b'{"model": "m"}'


def test_an_empty_post_gets_a_zero_length_and_an_empty_get_nothing() -> None:
    post = request_flow(b"HTTP/2.0", b"POST", b"")
    get = request_flow(b"HTTP/2.0", b"GET", b"")
    Framing().request(post)
    Framing().request(get)
    assert post.request.headers["content-length"] == "0"
    assert "content-length" not in get.request.headers


@pytest.mark.parametrize(
    ("version", "headers"),
    [
        (b"HTTP/1.1", ()),  # HTTP/1.1 framed the body already, or has none
        (b"HTTP/2.0", ((b"content-length", b"14"),)),
        (b"HTTP/2.0", ((b"transfer-encoding", b"chunked"),)),
    ],
    ids=["http1", "has-length", "chunked"],
)
def test_a_request_already_framed_is_left_alone(
    version: bytes, headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    flow = request_flow(version, b"POST", b'{"model": "m"}', *headers)
    Framing().request(flow)
    assert flow.request.headers.fields == headers


def test_a_request_answered_by_sluice_is_left_alone() -> None:
    flow = request_flow(b"HTTP/2.0", b"POST", b"{}")
    flow.response = tutils.tresp()
    Framing().request(flow)
    assert "content-length" not in flow.request.headers
