from __future__ import annotations

import pytest

from state.oauth_http import oauth_error


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
