"""A local fake of Claude on Google Vertex AI and of Google's OAuth token endpoint, mounted by
tests/fake_provider.py (for `VERTEX_HOST` and the token path).

Vertex: `POST /v1/projects/{p}/locations/{r}/publishers/anthropic/models/{model}:rawPredict` and
`:streamRawPredict` answer Anthropic's Messages (same JSON, same SSE: the fake's Anthropic answers, with
the model from the path), `.../models/count-tokens:rawPredict` the count. Only a bearer token the token
endpoint issued, and not yet expired, is accepted: any other gets Google's 401 UNAUTHENTICATED. Scripted
errors (`fake.next(status=429)`) come in Google's envelope: 429 RESOURCE_EXHAUSTED with Vertex's quota
message, 503 UNAVAILABLE, 403 PERMISSION_DENIED.

The token endpoint (`POST /token`, RFC 7523 JWT bearer grant, as google-auth's service-account credentials
send it): the assertion's RS256 signature is checked with the service account's public key and its audience
(Google's token endpoint), by google-auth's own JWT code; a good one gets a fresh access token good for
`lifetime_s` (short, so that refreshing is exercised). `service_account_info(token_uri)` is the key file to
configure sluice with; its private key is made per fake.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import google.auth.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

if TYPE_CHECKING:
    from tests.fake_provider import RecordedRequest

VERTEX_HOST = "us-east5-aiplatform.googleapis.com"
# Google's OAuth token endpoint, where Application Default Credentials are refreshed (sluice answers a client
# key's refresh itself; any other reaches the fake's token endpoint).
GOOGLE_TOKEN_HOST = "oauth2.googleapis.com"
REGION = "us-east5"
PROJECT = "sluice-test-project"
TOKEN_PATH = "/token"
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The audience of a service account's assertion, wherever its `token_uri` points (google-auth writes it).
TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
MODEL = "claude-sonnet-4-5@20250929"
_VERTEX_PATH = re.compile(
    r"^/v1(?:beta1)?/projects/[^/]+/locations/[^/]+/publishers/anthropic/models/([^/:]+):(rawPredict|streamRawPredict)$"
)
# Vertex's own wording of a per-model quota (what users report seeing).
QUOTA_MESSAGE = (
    "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model with base model: "
    "anthropic-claude-sonnet-4-5. Please submit a quota increase request. "
    "https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai."
)
UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
    "valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


# A sluice config with one client and the Vertex upstream, its tokens minted from `key_file`.
CONFIG = """
[[clients]]
name = "{client}"
key = "env:{client_variable}"

[[upstreams]]
host = "us-east5-aiplatform.googleapis.com"
provider = "vertex"
oauth = {{ mint = "google", credentials = "{credentials}" }}
"""


def config(client: str, client_variable: str, credentials: str) -> str:
    return CONFIG.format(client=client, client_variable=client_variable, credentials=credentials)


def vertex_path(path: str) -> tuple[str, str] | None:
    """(model, method) of a Vertex Anthropic path; None for any other."""
    found = _VERTEX_PATH.match(path.split("?", 1)[0])
    return (found.group(1), found.group(2)) if found else None


class FakeGoogle:
    """The service account, the token endpoint's state and the access tokens it issued."""

    def __init__(self, lifetime_s: float = 3600.0) -> None:
        self.lifetime_s = lifetime_s
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.public_key = (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        self.key_id = secrets.token_hex(20)
        self.client_email = f"sluice-proxy@{PROJECT}.iam.gserviceaccount.com"
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}  # access token -> epoch seconds it expires at
        self.issued: list[str] = []  # every access token issued, in order
        self.refused: list[str] = []  # why each refused grant was refused

    def service_account_info(self, token_uri: str) -> dict[str, Any]:
        """A service-account key file (the shape `gcloud iam service-accounts keys create` writes)."""
        return {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": self.key_id,
            "private_key": self.private_key,
            "client_email": self.client_email,
            "client_id": "10" + "7" * 19,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "universe_domain": "googleapis.com",
        }

    def write_key_file(self, path: Path, token_uri: str, text: str | None = None) -> Path:
        """The key file at `path`, readable by its owner only (as sluice requires)."""
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(text if text is not None else json.dumps(self.service_account_info(token_uri)))
        return path

    def grant(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        """The token endpoint's (status, JSON answer) to one request."""
        form = {name: values[0] for name, values in parse_qs(request.body.decode("latin-1")).items()}
        if form.get("grant_type") != JWT_GRANT or "assertion" not in form:
            return self._refuse("unsupported_grant_type", "Invalid grant_type.")
        try:
            claims = jwt.decode(
                form["assertion"], certs={self.key_id: self.public_key}, audience=TOKEN_AUDIENCE
            )
        except (ValueError, google.auth.exceptions.GoogleAuthError) as e:
            return self._refuse("invalid_grant", f"Invalid JWT Signature. ({e})")
        if claims.get("iss") != self.client_email:
            return self._refuse("invalid_grant", "Invalid JWT: issuer is not the service account.")
        token = "ya29.c.fake-" + secrets.token_urlsafe(48)
        with self._lock:
            self._expiry[token] = time.time() + self.lifetime_s
            self.issued.append(token)
        return 200, {"access_token": token, "expires_in": int(self.lifetime_s), "token_type": "Bearer"}

    def accepts(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        with self._lock:
            expiry = self._expiry.get(token.strip())
        return scheme.lower() == "bearer" and expiry is not None and time.time() < expiry

    def _refuse(self, error: str, description: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.refused.append(f"{error}: {description}")
        return 400, {"error": error, "error_description": description}


def as_anthropic(request: RecordedRequest) -> RecordedRequest | None:
    """The Anthropic Messages request a Vertex one stands for (the model moved from the path into the
    body), for the fake's Anthropic answers; None when the body is not a JSON object."""
    found = vertex_path(request.path)
    if found is None:
        return None
    model, _ = found
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if model == "count-tokens":
        return replace(request, path="/v1/messages/count_tokens")
    return replace(request, path="/v1/messages", body=json.dumps({**body, "model": model}).encode())
