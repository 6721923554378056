"""The gate (addons/gate.py): who is calling, by the client key a request presents."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mitmproxy import http

from addons.gate import REFUSAL, Gate
from tests.addons.proxy import CLIENT_KEY, CONFIG, configured, llm_flow

OPENAI = CONFIG + '\n[[upstreams]]\nhost = "api.openai.com"\nprovider = "openai"\nkeys = ["sk-openai-real"]\n'


@pytest.fixture
def proxy(tmp_path: Path):  # type: ignore[no-untyped-def]
    with configured(tmp_path, lambda core: [Gate(core)], OPENAI) as proxy:
        yield proxy


@pytest.mark.parametrize("key", [None, "not-a-key-sluice-issued"], ids=["no-key", "unknown-key"])
def test_a_request_without_a_known_key_is_refused_in_the_providers_envelope_and_the_row_says_why(
    proxy, key: str | None
) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow(key=key)
    asyncio.run(proxy.hook("request", flow))
    assert flow.response is not None and flow.response.status_code == 401
    assert flow.response.headers["x-should-retry"] == "false"
    assert json.loads(flow.response.content or b"") == {
        "type": "error",
        "error": {"type": "authentication_error", "message": REFUSAL},
    }
    call = proxy.record(flow)
    assert call.answered_locally and call.notes == ["refused: no known client key"] and call.client is None


def test_openai_callers_are_refused_in_openais_envelope(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow(host="api.openai.com", path="/v1/chat/completions", key=None)
    asyncio.run(proxy.hook("request", flow))
    assert flow.response is not None and flow.response.status_code == 401
    assert json.loads(flow.response.content or b"")["error"]["message"] == REFUSAL


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
def test_a_known_key_is_let_through_and_names_the_client(proxy, header: str) -> None:  # type: ignore[no-untyped-def]
    value = CLIENT_KEY if header == "x-api-key" else f"Bearer {CLIENT_KEY}"
    flow = llm_flow(key=None, headers=[(header, value)])
    asyncio.run(proxy.hook("request", flow))
    assert flow.response is None
    call = proxy.record(flow)
    assert (call.client, call.user_id) == ("alice", "alice@example.com")


def test_a_host_sluice_holds_no_credential_for_is_not_gated_but_a_known_key_still_names_the_client(
    proxy,
) -> None:  # type: ignore[no-untyped-def]
    anonymous = llm_flow(host="llm.example.org", key=None)
    known = llm_flow(host="llm.example.org")
    asyncio.run(proxy.hook("request", anonymous))
    asyncio.run(proxy.hook("request", known))
    assert anonymous.response is None and proxy.record(anonymous).client is None
    assert known.response is None and proxy.record(known).client == "alice"


def test_a_request_another_part_answered_is_left_alone(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow(key=None)
    flow.response = http.Response.make(204)
    asyncio.run(proxy.hook("request", flow))
    assert flow.response.status_code == 204


# A client's own key traded at a provider's token endpoint (Vertex: Application Default Credentials).

VERTEX = (
    CONFIG
    + '\n[[upstreams]]\nhost = "us-east5-aiplatform.googleapis.com"\nprovider = "vertex"\n'
    + 'oauth = { mint = "google", credentials = "default" }\n'
)


def token_flow(form: str, *, scheme: str = "https", host: str = "oauth2.googleapis.com") -> http.HTTPFlow:
    flow = llm_flow(
        form.encode(),
        host=host,
        path="/token",
        key=None,
        headers=[("content-type", "application/x-www-form-urlencoded")],
    )
    flow.request.headers["content-type"] = "application/x-www-form-urlencoded"
    flow.request.scheme = scheme
    return flow


@pytest.fixture
def vertex_proxy(tmp_path: Path):  # type: ignore[no-untyped-def]
    with configured(tmp_path, lambda core: [Gate(core)], VERTEX) as proxy:
        yield proxy


def test_a_refresh_with_a_client_key_is_answered_with_that_key(vertex_proxy) -> None:  # type: ignore[no-untyped-def]
    flow = token_flow(f"grant_type=refresh_token&client_id=x&client_secret=y&refresh_token={CLIENT_KEY}")
    asyncio.run(vertex_proxy.hook("request", flow))
    assert flow.response is not None and flow.response.status_code == 200
    assert json.loads(flow.response.content or b"") == {
        "access_token": CLIENT_KEY,
        "expires_in": 3599,
        "token_type": "Bearer",
    }
    assert flow.response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("form", "scheme", "host"),
    [
        ("grant_type=refresh_token&refresh_token=someone-elses", "https", "oauth2.googleapis.com"),
        (f"grant_type=authorization_code&refresh_token={CLIENT_KEY}", "https", "oauth2.googleapis.com"),
        (f"grant_type=refresh_token&refresh_token={CLIENT_KEY}", "http", "oauth2.googleapis.com"),
        (f"grant_type=refresh_token&refresh_token={CLIENT_KEY}", "https", "oauth2.attacker.example"),
        (
            json.dumps({"grant_type": "refresh_token", "refresh_token": CLIENT_KEY}),
            "https",
            "oauth2.googleapis.com",
        ),
    ],
    ids=["unknown-token", "another-grant", "cleartext", "another-host", "not-a-form"],
)
def test_any_other_token_request_goes_on_untouched(vertex_proxy, form: str, scheme: str, host: str) -> None:  # type: ignore[no-untyped-def]
    flow = token_flow(form, scheme=scheme, host=host)
    asyncio.run(vertex_proxy.hook("request", flow))
    assert flow.response is None


def test_no_trade_is_answered_without_an_upstream_whose_provider_has_that_endpoint(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = token_flow(f"grant_type=refresh_token&refresh_token={CLIENT_KEY}")
    asyncio.run(proxy.hook("request", flow))
    assert flow.response is None
