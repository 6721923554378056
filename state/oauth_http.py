"""HTTP to a provider's OAuth endpoints, for the proxy and the `sluice` command alike (no mitmproxy here).

The refresh (RFC 6749 §6) is what `OAuthStore` calls, injected as its `refresh_fn`, holding the store's
lease: one call per expiry across processes. Errors are sorted the way the store needs them: a 4xx answer is
`TokenRefused` (terminal: the refresh token is spent or revoked), anything else is OSError (transient).

`get_usage` reads the subscription's usage windows from Anthropic's OAuth usage endpoint (rules/oauth_usage.py
says what is known of it, and that it is not documented). It connects to exactly the host and port it is
given, over TLS verified with the context it is given, and never through a proxy from the environment: the
access token goes nowhere else.

Nothing here logs or raises a token; the endpoints' own words are cut to printable text.
"""

from __future__ import annotations

import http.client
import json
import math
import ssl
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime

from rules.config import OAuth
from rules.credential_files import TokenResponse
from rules.oauth_usage import SCOPE_NEEDED, USAGE_BETA, USAGE_PATH
from rules.secrets import unusable_secret
from rules.times import parse_reset
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


DEFAULT_LIFETIME_S = 3600.0  # an access token's lifetime when the answer names none usable (RFC 6749 §5.1)


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
    access = payload.get("access_token") if isinstance(payload, dict) else None
    if not isinstance(access, str) or not access:
        raise OSError("token endpoint answer has no access_token")
    refresh = payload.get("refresh_token")
    for name, token in (("access_token", access), ("refresh_token", refresh)):
        # Written into request headers later: a token that would break one is never stored.
        if isinstance(token, str) and token and (problem := unusable_secret(token)) is not None:
            raise OSError(f"token endpoint answer's {name} cannot be used: {problem}")
    return TokenResponse(
        access_token=access,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        expires_in=_lifetime(payload.get("expires_in")),
    )


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
        wait = None
        now = datetime.now(UTC)
        # Delay-seconds or an HTTP-date (RFC 9110 §10.2.3); anything else is "not said".
        if retry_after is not None and (until := parse_reset(retry_after, now)) is not None:
            wait = max(0.0, (until - now).total_seconds())
        return UsageRefused(f"usage endpoint is rate limiting (429, {words})", status, wait)
    if status == 401:
        return UsageRefused(f"usage endpoint refused the OAuth access token (401, {words})", status)
    return UsageRefused(f"usage endpoint answered {status} ({words})", status)


def _lifetime(expires_in: object) -> float:
    """`expires_in` in seconds; an hour when it is not a positive, finite number (JSON's NaN and Infinity
    included): such a token would otherwise be refreshed on every call, or never."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        return DEFAULT_LIFETIME_S
    seconds = float(expires_in)
    return seconds if math.isfinite(seconds) and seconds > 0 else DEFAULT_LIFETIME_S


def oauth_error(body: bytes) -> tuple[str, str]:
    """RFC 6749 §5.2 error response: `error` and `error_description`, as text fit for a log line and the
    pool's reason (printable, at most 200 characters: the token endpoint's words, not its control codes)."""
    try:
        data = json.loads(body)
    except ValueError:
        return "", _loggable(body[:200].decode("utf-8", "replace"))
    if not isinstance(data, dict):
        return "", ""
    error = data.get("error")
    if isinstance(error, dict):  # some providers nest it
        return _loggable(str(error.get("type", ""))), _loggable(str(error.get("message", "")))
    return _loggable(str(error or "")), _loggable(str(data.get("error_description", "")))


def _loggable(text: str) -> str:
    return "".join(char if char.isprintable() else "?" for char in text[:200])
