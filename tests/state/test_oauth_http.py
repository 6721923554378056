from __future__ import annotations

import http.server
import re
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from rules.config import OAuth
from state.oauth_http import UsageRefused, get_usage, post_refresh
from tests.fake_provider import USAGE_RATE_LIMITED_429, USAGE_SCOPE_403, FakeProvider

# The usage endpoint, against the fake provider over TLS on loopback.


@pytest.fixture
def usage_fake(fake: FakeProvider) -> FakeProvider:
    fake.know_token(TOKEN)
    return fake


TOKEN = "sk-ant-oat01-USAGE-TEST-TOKEN-0a1b2c3d4e5f6a7b"


def _context(fake: FakeProvider) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(fake.ca_pem))


def test_usage_is_read_with_the_bearer_token_and_the_oauth_beta(
    usage_fake: FakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # never consulted: the token goes nowhere else
    usage_fake.oauth_usage = {"five_hour": {"utilization": 61.0, "resets_at": None}}

    answer = get_usage("localhost", usage_fake.port, TOKEN, _context(usage_fake))

    assert answer == {"five_hour": {"utilization": 61.0, "resets_at": None}}
    [seen] = usage_fake.requests
    assert (seen.method, seen.target, seen.sni) == ("GET", "/api/oauth/usage", "localhost")
    assert seen.header("authorization") == f"Bearer {TOKEN}"
    assert seen.header("anthropic-beta") == "oauth-2025-04-20"
    assert seen.header("accept") == "application/json"


def test_an_untrusted_certificate_is_refused(usage_fake: FakeProvider) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        get_usage("localhost", usage_fake.port, TOKEN, ssl.create_default_context())
    assert usage_fake.requests == []


@pytest.mark.parametrize(
    ("status", "body", "headers", "message", "retry_after_s"),
    [
        (
            403,
            USAGE_SCOPE_403,
            (),
            "usage endpoint refused the OAuth token (403, permission_error: OAuth token does not meet scope "
            "requirement user:profile): the login lacks the user:profile scope the usage endpoint needs; "
            "log in again with one that grants it (Claude Code's own login does)",
            None,
        ),
        (
            429,
            USAGE_RATE_LIMITED_429,
            (("retry-after", "120"),),
            "rate limiting (429, rate_limit_error: Rate",
            120.0,
        ),
        (429, USAGE_RATE_LIMITED_429, (("retry-after", None),), "rate limiting", None),
        (
            401,
            None,
            (),
            "refused the OAuth access token (401, authentication_error: invalid x-api-key)",
            None,
        ),
        (503, None, (), "usage endpoint answered 503 (api_error", None),
    ],
)
def test_a_refusal_says_what_the_endpoint_said(
    usage_fake: FakeProvider,
    status: int,
    body: dict[str, Any] | None,
    headers: tuple[tuple[str, str | None], ...],
    message: str,
    retry_after_s: float | None,
) -> None:
    usage_fake.next(path="/api/oauth/usage", status=status, body=body, headers=headers)

    with pytest.raises(UsageRefused) as refused:
        get_usage("localhost", usage_fake.port, TOKEN, _context(usage_fake))

    assert message in str(refused.value)
    assert (refused.value.status, refused.value.retry_after_s) == (status, retry_after_s)
    assert TOKEN not in str(refused.value)


def test_a_retry_after_date_is_a_wait(usage_fake: FakeProvider) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(minutes=10), usegmt=True)
    usage_fake.next(
        path="/api/oauth/usage", status=429, body=USAGE_RATE_LIMITED_429, headers=[("retry-after", when)]
    )

    with pytest.raises(UsageRefused) as refused:
        get_usage("localhost", usage_fake.port, TOKEN, _context(usage_fake))

    assert refused.value.retry_after_s is not None and 590 <= refused.value.retry_after_s <= 600


def test_a_token_the_fake_does_not_know_is_refused(usage_fake: FakeProvider) -> None:
    with pytest.raises(UsageRefused, match=r"401, authentication_error: Invalid bearer token"):
        get_usage("localhost", usage_fake.port, "sk-ant-oat01-SOMEONE-ELSES", _context(usage_fake))


@pytest.mark.parametrize(
    ("body", "error"),
    [(b"<html>busy</html>", "usage endpoint sent no JSON"), (b"[" * 300_000, "over 262144 bytes")],
)
def test_an_answer_that_is_not_usage_is_an_oserror(usage_fake: FakeProvider, body: bytes, error: str) -> None:
    usage_fake.next(path="/api/oauth/usage", body=body)

    with pytest.raises(OSError, match=re.escape(error)):
        get_usage("localhost", usage_fake.port, TOKEN, _context(usage_fake))


def test_nothing_listening_is_an_oserror(usage_fake: FakeProvider) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):
        get_usage("127.0.0.1", port, TOKEN, _context(usage_fake))


@pytest.mark.parametrize("expires_in", ["NaN", "Infinity", "1e400", "-3600", "0", '"3600"'])
def test_a_lifetime_that_is_no_number_of_seconds_counts_as_an_hour(expires_in: str) -> None:
    """A token endpoint's `expires_in` that is not a positive number of seconds (NaN and Infinity are what
    Python's JSON reads them as) must neither crash the refresh that already stored the new tokens nor make
    the token never (or always) due for a refresh."""
    tokens = '"access_token": "access-2", "refresh_token": "refresh-2"'
    body = f'{{{tokens}, "expires_in": {expires_in}}}'.encode()

    class Endpoint(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endpoint) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            config = OAuth(
                credentials="file:unused",
                token_url=f"http://127.0.0.1:{server.server_address[1]}/v1/oauth/token",
                client_id="client",
            )
            answer = post_refresh(config, "refresh-1", ssl.create_default_context())
        finally:
            server.shutdown()
    assert answer.access_token == "access-2"
    assert answer.expires_in == 3600.0
