"""Upstream failures (addons/upstream_errors.py): the client gets an error in the provider's own envelope,
which its SDK reads and retries, instead of mitmproxy's HTML page."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mitmproxy import flow as mflow

from addons import upstream_errors
from addons.meter import Meter
from addons.upstream_errors import UpstreamErrors
from tests.addons.proxy import configured, llm_flow


def fail(flow, message: str) -> None:  # type: ignore[no-untyped-def]
    flow.error = mflow.Error(message)


def parts(core):  # type: ignore[no-untyped-def]
    return [UpstreamErrors(core), Meter(core)]


@pytest.mark.parametrize(
    ("message", "status"),
    [("Connection refused", 502), ("Server disconnected", 502), ("connect timed out", 504)],
)
def test_an_upstream_failure_is_answered_in_the_providers_envelope(
    tmp_path: Path, message: str, status: int
) -> None:
    flow = llm_flow()
    fail(flow, message)
    with configured(tmp_path, parts) as proxy:
        asyncio.run(proxy.hook("request", flow))
        asyncio.run(proxy.hook("error", flow))
    page = upstream_errors._pop_http1(flow.request)  # what mitmproxy's HTTP/1 layer sends instead
    assert page is not None and page.status_code == status
    assert page.headers["x-should-retry"] == "true" and page.headers["connection"] == "close"
    error = json.loads(page.content or b"")
    assert error["type"] == "error" and message in error["error"]["message"]


def test_over_http2_the_envelope_is_found_by_connection_and_message(tmp_path: Path) -> None:
    flow = llm_flow(http_version="HTTP/2.0")
    fail(flow, "Connection refused")
    with configured(tmp_path, parts) as proxy:
        asyncio.run(proxy.hook("error", flow))
    page = upstream_errors._pop_h2(flow.client_conn.id, "Connection refused")
    assert page is not None and page.status_code == 502 and page.http_version == "HTTP/2.0"
    assert upstream_errors._pop_h2(flow.client_conn.id, "Connection refused") is None  # sent once


def test_a_metered_call_on_a_host_sluice_does_not_know_gets_its_providers_envelope(tmp_path: Path) -> None:
    """The record says whose call it is: read before the meter ends the record (addons/order.py)."""
    flow = llm_flow(host="llm-gateway.example.org", path="/openai/v1/chat/completions")
    fail(flow, "Connection refused")
    with configured(tmp_path, parts) as proxy:
        asyncio.run(proxy.hook("request", flow))
        asyncio.run(proxy.hook("error", flow))
    page = upstream_errors._pop_http1(flow.request)
    assert page is not None and "Connection refused" in json.loads(page.content or b"")["error"]["message"]


def test_other_traffic_keeps_mitmproxys_page(tmp_path: Path) -> None:
    flow = llm_flow(host="pypi.org", path="/simple/")
    flow.request.method = "GET"
    fail(flow, "Connection refused")
    with configured(tmp_path, parts) as proxy:
        asyncio.run(proxy.hook("error", flow))
    assert upstream_errors._pop_http1(flow.request) is None


def test_a_request_that_was_answered_after_all_leaves_nothing_behind(tmp_path: Path) -> None:
    flow = llm_flow()
    fail(flow, "Connection refused")
    with configured(tmp_path, parts) as proxy:
        asyncio.run(proxy.hook("error", flow))
        asyncio.run(proxy.hook("response", flow))
    assert upstream_errors._pop_http1(flow.request) is None
