"""The header allow-lists (addons/headers.py), both ways, on provider traffic only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mitmproxy import http

from addons.headers import Headers
from tests.addons.proxy import CONFIG, answer, configured, llm_flow


@pytest.fixture
def proxy(tmp_path: Path):  # type: ignore[no-untyped-def]
    with configured(tmp_path, lambda core: [Headers(core)]) as proxy:
        yield proxy


def test_a_cookie_on_a_provider_call_is_dropped_and_the_row_notes_it(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow(headers=[("cookie", "session=secret"), ("anthropic-version", "2023-06-01")])
    asyncio.run(proxy.hook("request", flow))
    assert "cookie" not in flow.request.headers
    assert flow.request.headers["anthropic-version"] == "2023-06-01"  # what the API needs crosses
    assert flow.request.headers["x-api-key"]  # the credential swap replaces it later
    assert proxy.record(flow).rules_applied == ["request_headers_dropped:cookie"]


def test_set_cookie_from_a_provider_never_reaches_the_client(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow()
    reply = answer(200, {"type": "message"}, [("set-cookie", "tracker=1"), ("request-id", "req_1")])
    asyncio.run(proxy.call(flow, reply))
    assert flow.response is not None and "set-cookie" not in flow.response.headers
    assert flow.response.headers["request-id"] == "req_1"
    assert "response_headers_dropped:set-cookie" in proxy.record(flow).rules_applied


def test_traffic_to_a_host_that_is_no_providers_passes_untouched(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow(host="pypi.org", path="/simple/", headers=[("cookie", "session=1")])
    flow.request.method = "GET"
    asyncio.run(proxy.hook("request", flow))
    assert flow.request.headers["cookie"] == "session=1"


def test_a_metered_call_on_an_unknown_host_gets_its_providers_policy(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow(
        host="llm-gateway.example.org", path="/anthropic/v1/messages", headers=[("cookie", "a=1")]
    )
    asyncio.run(proxy.hook("request", flow))
    assert "cookie" not in flow.request.headers


def test_request_trailers_to_a_provider_are_dropped(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow()
    flow.request.trailers = http.Headers(cookie="smuggled=1")
    asyncio.run(proxy.hook("request", flow))
    assert flow.request.trailers is None
    assert "request_trailers_dropped" in proxy.record(flow).rules_applied


def test_an_operator_allowed_header_crosses(tmp_path: Path) -> None:
    config = CONFIG + '\n[rules.request_headers]\nallow = ["x-team"]\n'
    with configured(tmp_path, lambda core: [Headers(core)], config) as proxy:
        flow = llm_flow(headers=[("x-team", "search"), ("x-other", "1")])
        asyncio.run(proxy.hook("request", flow))
    assert flow.request.headers["x-team"] == "search" and "x-other" not in flow.request.headers


def test_only_the_answer_sluice_made_keeps_its_headers_not_an_upstreams_copy_of_it(proxy) -> None:  # type: ignore[no-untyped-def]
    own = llm_flow()
    asyncio.run(proxy.hook("request", own))
    limit = {"x-sluice-limit": "client alice rpm", "anthropic-ratelimit-requests-remaining": "0"}
    proxy.core.answer(own, 429, "over the limit", limit, "refused: rate limit")
    asyncio.run(proxy.hook("responseheaders", own))
    assert own.response is not None and own.response.headers["x-sluice-limit"] == "client alice rpm"
    # An upstream (or a gateway echoing a client) sends the very same answer, byte for byte: still filtered.
    copied = llm_flow()
    asyncio.run(proxy.hook("request", copied))
    reply = http.Response.make(429, own.response.content, {**own.response.headers})
    asyncio.run(proxy.call(copied, reply))
    assert copied.response is not None and "x-sluice-limit" not in copied.response.headers
    assert not proxy.core.answered_by_sluice(copied.response)
