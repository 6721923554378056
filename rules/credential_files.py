"""What an OAuth login is made of, as a credentials file and a token endpoint give it. Pure: text in,
tokens out.

`parse_oauth_credentials` reads the credentials file an upstream's `oauth.credentials` names (Claude Code's
`.credentials.json`, a flat `access_token`/`refresh_token`/`expires_at` object, or a bare long-lived token);
`token_response` reads what a refresh gives back (RFC 6749 §5.1), `oauth_error` what a refusal says (§5.2).
Tokens never appear in a repr or an error: a malformed file or answer is refused naming the field, never the
value (fails closed: such a login, or such an answer, is not used).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from rules.secrets import fingerprint, unusable_secret


@dataclass(frozen=True, slots=True)
class OAuthTokens:
    """Tokens as a credentials file holds them. `expires_at` is epoch seconds, None when unknown."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    scopes: tuple[str, ...] = ()

    @property
    def identity(self) -> str:
        """The fingerprint that names this login: of the refresh token, else of the access token. Use it
        as the pool fingerprint of the OAuth credential, so a new login is a new credential."""
        return fingerprint(self.refresh_token or self.access_token)


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """A token endpoint's answer (RFC 6749 §5.1). `refresh_token` None keeps the old one."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_in: float = 3600.0


DEFAULT_LIFETIME_S = 3600.0  # an access token's lifetime when the answer names none usable (RFC 6749 §5.1)

# Epoch values above this are milliseconds: 1e11 seconds is the year 5138, 1e11 ms is 1973.
_EPOCH_MS_THRESHOLD = 100_000_000_000


def parse_oauth_credentials(text: str) -> OAuthTokens:
    """Read a credentials file's text. Accepted shapes:

    - Claude Code's `.credentials.json`: `{"claudeAiOauth": {"accessToken", "refreshToken", "expiresAt"
      (epoch milliseconds), "scopes"}}`;
    - a flat `{"access_token", "refresh_token", "expires_at"}` (epoch seconds; milliseconds are detected);
    - a bare long-lived token (for example from `claude setup-token`): no refresh, no known expiry.

    Raises ValueError naming the missing or malformed field, never a value.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("the OAuth credentials are empty")
    if not stripped.startswith(("{", "[", '"')):
        if any(char.isspace() for char in stripped):
            raise ValueError("the OAuth credentials are neither JSON nor a single token")
        if (problem := unusable_secret(stripped)) is not None:
            raise ValueError(f"the OAuth token cannot be used: {problem}")
        return OAuthTokens(access_token=stripped)
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as e:
        raise ValueError(f"the OAuth credentials are not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError("the OAuth credentials must be a JSON object")
    nested = data.get("claudeAiOauth")
    if isinstance(nested, dict):
        return _tokens_from(nested, "claudeAiOauth.", "accessToken", "refreshToken", "expiresAt", "scopes")
    return _tokens_from(data, "", "access_token", "refresh_token", "expires_at", "scope")


def _tokens_from(
    data: dict[str, object], prefix: str, access: str, refresh: str, expires: str, scopes: str
) -> OAuthTokens:
    access_token = data.get(access)
    if not isinstance(access_token, str) or not access_token.strip():
        raise ValueError(f"the OAuth credentials have no {prefix}{access}")
    refresh_token = data.get(refresh)
    if refresh_token is not None and not isinstance(refresh_token, str):
        raise ValueError(f"{prefix}{refresh} must be a string")
    for name, token in ((access, access_token), (refresh, refresh_token)):
        if token and (problem := unusable_secret(token.strip())) is not None:
            raise ValueError(f"{prefix}{name} cannot be used: {problem}")
    expires_at = data.get(expires)
    if expires_at is not None and (
        isinstance(expires_at, bool)
        or not isinstance(expires_at, int | float)
        or not math.isfinite(expires_at)
    ):
        raise ValueError(f"{prefix}{expires} must be a number (epoch time)")
    if expires_at is not None and expires_at > _EPOCH_MS_THRESHOLD:
        expires_at = expires_at / 1000
    raw_scopes = data.get(scopes)
    scope_list = raw_scopes.split() if isinstance(raw_scopes, str) else raw_scopes
    return OAuthTokens(
        access_token=access_token.strip(),
        refresh_token=(refresh_token.strip() or None) if refresh_token else None,
        expires_at=None if expires_at is None else float(expires_at),
        scopes=tuple(str(s) for s in scope_list) if isinstance(scope_list, list) else (),
    )


# -- the token endpoint's answers ------------------------------------------------------------------------


def token_response(payload: object) -> TokenResponse:
    """A token endpoint's answer to a refresh, decoded from JSON (RFC 6749 §5.1). Raises ValueError naming
    what is missing or unusable, never a value. The tokens are written into request headers later, so one
    that would break a header is refused here and never stored (fails closed)."""
    if not isinstance(payload, dict):
        raise ValueError("token endpoint answer has no access_token")
    access = payload.get("access_token")
    if not isinstance(access, str) or not access:
        raise ValueError("token endpoint answer has no access_token")
    refresh = payload.get("refresh_token")
    for name, token in (("access_token", access), ("refresh_token", refresh)):
        if isinstance(token, str) and token and (problem := unusable_secret(token)) is not None:
            raise ValueError(f"token endpoint answer's {name} cannot be used: {problem}")
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
