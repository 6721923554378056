"""HTTP to a provider's OAuth endpoints, for the proxy and the `sluice` command alike (no mitmproxy here).

The refresh (RFC 6749 §6) is what `OAuthStore` calls, injected as its `refresh_fn`, holding the store's
lease: one call per expiry across processes. Errors are sorted the way the store needs them: a 4xx answer is
`TokenRefused` (terminal: the refresh token is spent or revoked), anything else is OSError (transient).
Nothing here logs or raises a token; the endpoint's own words are cut to printable text.
"""

from __future__ import annotations

import json
import math
import ssl
import urllib.error
import urllib.parse
import urllib.request

from rules.config import OAuth
from rules.secrets import unusable_secret
from state.credentials import TokenRefused, TokenResponse

# Below the OAuth store's own 20 s limit, so a late answer (carrying a rotated, single-use token) is not lost.
REFRESH_TIMEOUT_S = 15
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
