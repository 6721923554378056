from __future__ import annotations

import http.server
import ssl
import threading

import pytest

from rules.config import OAuth
from state.oauth_http import oauth_error, post_refresh


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            b'{"error": "invalid_grant", "error_description": "Refresh token revoked"}',
            ("invalid_grant", "Refresh token revoked"),
        ),
        (b'{"error": {"type": "invalid_request_error", "message": "bad"}}', ("invalid_request_error", "bad")),
        (
            b'{"error": "x", "error_description": "a\\r\\nForged: line \\u001b[2J"}',
            ("x", "a??Forged: line ?[2J"),
        ),
        (b"<html>\x1b]0;title\x07</html>", ("", "<html>?]0;title?</html>")),
        (b'{"error": "x", "error_description": "' + b"y" * 500 + b'"}', ("x", "y" * 200)),
    ],
)
def test_a_token_endpoints_error_is_kept_as_printable_text(body: bytes, error: tuple[str, str]) -> None:
    assert oauth_error(body) == error


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
