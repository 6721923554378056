"""HTTP to a provider's OAuth endpoints, for the proxy and the `sluice` command alike (no mitmproxy here).

The refresh (RFC 6749 §6) is what `OAuthStore` calls, injected as its `refresh_fn`, holding the store's
lease: one call per expiry across processes. Errors are sorted the way the store needs them: a 4xx answer is
`TokenRefused` (terminal: the refresh token is spent or revoked), anything else is OSError (transient).

`get_usage` reads the subscription's usage windows from Anthropic's OAuth usage endpoint
(rules/providers/anthropic/oauth_usage.py says what is known of it, and that it is not documented). It
connects to exactly the host and port it is given, over TLS verified with the context it is given, and never
through a proxy from the environment: the access token goes nowhere else.

Nothing here logs or raises a token; the endpoints' own words are cut to printable text.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

from rules.config import OAuth
from rules.credential_files import TokenResponse, oauth_error, token_response
from rules.provider_answers import retry_after as read_retry_after
from rules.providers.anthropic.oauth_usage import SCOPE_NEEDED, USAGE_BETA, USAGE_PATH
from state.oauth import TokenRefused

# Below the OAuth store's own 20 s limit, so a late answer (carrying a rotated, single-use token) is not lost.
REFRESH_TIMEOUT_S = 15
USAGE_TIMEOUT_S = 10
# The answer is a few hundred bytes; anything near this is not the usage endpoint talking.
USAGE_MAX_BYTES = 256 * 1024


class UsageRefused(Exception):
    """The usage endpoint answered, but not with the usage: `status` is its HTTP status; for a 429,
    `retry_after_s` is how long it asked to be left alone (None when it did not say)."""

    def __init__(self, message: str, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


def post_refresh(config: OAuth, refresh_token: str, context: ssl.SSLContext) -> TokenResponse:
    """RFC 6749 §6 refresh request. Raises TokenRefused for a 4xx answer, OSError for anything transient."""
    fields = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": config.client_id}
    if config.scope:
        fields["scope"] = config.scope
    if config.token_format == "json":
        body, content_type = json.dumps(fields).encode(), "application/json"
    else:
        body, content_type = urllib.parse.urlencode(fields).encode(), "application/x-www-form-urlencoded"
    request = urllib.request.Request(
        str(config.token_url),
        data=body,
        method="POST",
        headers={"content-type": content_type, "accept": "application/json"},
    )
    # Straight to the token endpoint, never through a proxy the environment names: the shell where clients
    # are pointed at sluice names sluice itself (and trusts its CA), which would see the tokens in the clear.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(request, timeout=REFRESH_TIMEOUT_S) as answer:
            payload = json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as e:
        detail = oauth_error(e.read())
        # 408 and 429 are "not now", not "never": the refresh token is still good.
        if 400 <= e.code < 500 and e.code not in (408, 429):
            raise TokenRefused(detail[0] or f"http_{e.code}", detail[1]) from None
        raise OSError(f"token endpoint answered {e.code}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise OSError(f"token endpoint sent no JSON: {e}") from None
    try:
        return token_response(payload)
    except ValueError as e:  # not a usable answer: transient, the refresh token is not known to be spent
        raise OSError(str(e)) from None


def get_usage(host: str, port: int, access_token: str, context: ssl.SSLContext) -> object:
    """GET the OAuth usage endpoint on `host:port` with `access_token`; the decoded JSON answer.

    Raises UsageRefused for an HTTP error answer (401: token refused; 403: most often a login without the
    `user:profile` scope; 429: the endpoint's own rate limit, with its retry-after), OSError for a failure
    to connect, read or decode.
    """
    connection = http.client.HTTPSConnection(host, port, timeout=USAGE_TIMEOUT_S, context=context)
    try:
        connection.request(
            "GET",
            USAGE_PATH,
            headers={
                "authorization": f"Bearer {access_token}",
                "anthropic-beta": USAGE_BETA,
                "accept": "application/json",
                "user-agent": "sluice",
            },
        )
        answer = connection.getresponse()
        body = answer.read(USAGE_MAX_BYTES + 1)
        status, retry_after = answer.status, answer.getheader("retry-after")
    except http.client.HTTPException as e:  # a malformed answer: transient as far as we can tell
        raise OSError(f"usage endpoint answered malformed HTTP: {e!r}") from None
    finally:
        connection.close()
    if len(body) > USAGE_MAX_BYTES:
        raise OSError(f"usage endpoint answer is over {USAGE_MAX_BYTES} bytes")
    if status != 200:
        raise _refusal(status, body, retry_after)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise OSError(f"usage endpoint sent no JSON: {e}") from None


def _refusal(status: int, body: bytes, retry_after: str | None) -> UsageRefused:
    kind, message = oauth_error(body)
    words = ": ".join(part for part in (kind, message) if part) or "no reason given"
    if status == 403:
        hint = (
            f"the login lacks the {SCOPE_NEEDED} scope the usage endpoint needs; log in again with one that "
            f"grants it (Claude Code's own login does)"
            if SCOPE_NEEDED in message
            else "the login may not read usage"
        )
        return UsageRefused(f"usage endpoint refused the OAuth token (403, {words}): {hint}", status)
    if status == 429:
        # Delay-seconds or an HTTP-date (RFC 9110 §10.2.3), read as a provider's 429 is; anything else is
        # "not said".
        said = {} if retry_after is None else {"retry-after": retry_after}
        wait = read_retry_after(said, time.time())
        return UsageRefused(f"usage endpoint is rate limiting (429, {words})", status, wait)
    if status == 401:
        return UsageRefused(f"usage endpoint refused the OAuth access token (401, {words})", status)
    return UsageRefused(f"usage endpoint answered {status} ({words})", status)
