"""Google access tokens minted in the proxy through google-auth, for the OAuth store's refresh.

An upstream whose `oauth.mint = "google"` holds no token of its own: its credentials are a service-account
key file (or an authorized user's), or `default` for Application Default Credentials
(`google.auth.default()`: GOOGLE_APPLICATION_CREDENTIALS, workload identity federation, the gcloud login,
the metadata server). `OAuthStore` keeps the minted token in the secrets file and decides when to mint
(ahead of expiry, once per expiry across processes: its lease and compare-and-swap); `mint` is its
`refresh_fn`, run off the event loop.

The token request goes to the credentials' own token endpoint directly, never through a proxy from the
environment (HTTPS_PROXY may name sluice itself), verified with the CA bundle it is given. Nothing here logs
or raises the private key or a token: google-auth's errors name the endpoint's error, and the store scrubs
them.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import google.auth
import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from rules.credential_files import TokenResponse
from rules.secrets import fingerprint
from state.oauth import TokenRefused

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
DEFAULT = "default"  # `oauth.credentials = "default"`: Application Default Credentials
MINT_TIMEOUT_S = 15  # below the OAuth store's own 20 s limit


def identity(credentials_json: str | None) -> str:
    """What names the credential in the pool and the store (a new key file is a new credential): a
    fingerprint of the file's text, or of `default`. Never the key itself."""
    return "google:" + fingerprint(credentials_json if credentials_json is not None else DEFAULT)


def check_credentials(credentials_json: str) -> str:
    """The account a key file names (its `client_email`, or its type); ValueError saying what is wrong,
    never quoting the file."""
    try:
        info = json.loads(credentials_json)
    except ValueError:
        raise ValueError("not a JSON credentials file") from None
    if not isinstance(info, dict) or not isinstance(info.get("type"), str):
        raise ValueError("a Google credentials JSON has a `type` (service_account, authorized_user)")
    try:
        _from_info(info)
    except (ValueError, KeyError, google.auth.exceptions.GoogleAuthError) as e:
        detail = e.args[0] if isinstance(e, ValueError) and e.args and "type" in str(e.args[0]) else ""
        raise ValueError(f"google-auth cannot use it{': ' + detail if detail else ''}") from None
    return str(info.get("client_email") or info["type"])


def mint(credentials_json: str | None, verify: str | bool) -> TokenResponse:
    """A fresh access token. Raises TokenRefused when the token endpoint refused for good (a deleted key,
    a disabled account: retrying cannot help), any other exception when it may work later."""
    credentials = _credentials(credentials_json)
    session = requests.Session()
    session.trust_env = False  # no HTTPS_PROXY, no .netrc: the token request goes to the endpoint itself
    session.verify = verify
    try:
        credentials.refresh(_Request(session))
    except google.auth.exceptions.RefreshError as e:
        if getattr(e, "retryable", False):
            raise OSError(f"the token endpoint failed: {_first_line(e)}") from None
        raise TokenRefused("refused", _first_line(e)) from None
    finally:
        session.close()
    if not credentials.token:
        raise OSError("google-auth returned no access token")
    return TokenResponse(str(credentials.token), None, _lifetime(credentials.expiry))


class _Request(google.auth.transport.requests.Request):
    """google-auth's transport with a deadline on every call."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", MINT_TIMEOUT_S)
        return super().__call__(*args, **kwargs)  # type: ignore[no-untyped-call]


def _credentials(credentials_json: str | None) -> Any:
    if credentials_json is None:
        credentials, _ = google.auth.default(scopes=list(SCOPES))
        return credentials
    return _from_info(json.loads(credentials_json))


def _from_info(info: dict[str, Any]) -> Any:
    """Credentials of the two kinds of key file a person hands the proxy. Others (workload identity
    federation's `external_account`, which makes google-auth fetch URLs the file names) go through
    `default`, from GOOGLE_APPLICATION_CREDENTIALS, where google-auth's own checks apply."""
    kind = info.get("type")
    if kind == "service_account":
        return service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))  # type: ignore[no-untyped-call]
    if kind == "authorized_user":
        return user_credentials.Credentials.from_authorized_user_info(info, scopes=list(SCOPES))  # type: ignore[no-untyped-call]
    raise ValueError(
        f"credentials of type {kind!r} are read through `default` (GOOGLE_APPLICATION_CREDENTIALS)"
    )


def _lifetime(expiry: datetime.datetime | None) -> float:
    """Seconds left of a token google-auth says expires at `expiry` (naive UTC); an hour when unsaid."""
    if expiry is None:
        return 3600.0
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return max(0.0, (expiry - now).total_seconds())


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:300] if str(error) else type(error).__name__
