"""Verify a client's SigV4 signature made with its placeholder AWS key pair.

Fails closed: a request that is unsigned, names an unknown access key id, leaves host, x-amz-date or
the body hash out of its signed headers, is dated too far from now, is scoped to another service or
region, or whose signature botocore does not recompute, is refused with the exception name Bedrock
itself answers with (botocore maps it to a ClientError the client's code already handles).
The signature algorithm is botocore's; this module only rebuilds the request as received (so it lives in
addons/, not in the pure rules/).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

# AWS refuses a signature dated more than 15 minutes from its clock.
MAX_SKEW = timedelta(minutes=15)
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[A-Za-z0-9]{1,128})/(?P<date>\d{8})/(?P<region>[a-z0-9-]{1,32})/"
    r"(?P<service>[a-z0-9-]{1,32})/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;_.-]{1,2048}), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
_REQUIRED_SIGNED = ("host", "x-amz-date")


@dataclass(frozen=True)
class Refusal:
    """Why a signed request is refused: Bedrock's exception name and a message for the client and the row."""

    exception: str
    message: str


@dataclass(frozen=True)
class SignedBy:
    """The parts of a well-formed Authorization header."""

    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str | None) -> SignedBy | Refusal:
    """Read a SigV4 Authorization header; anything else is a refusal (fails closed)."""
    if not value:
        return Refusal("MissingAuthenticationTokenException", "Missing Authentication Token")
    match = _AUTH.match(value.strip())
    if match is None:
        return Refusal("IncompleteSignatureException", "Authorization header is not a SigV4 signature")
    return SignedBy(
        access_key_id=match["key"],
        date=match["date"],
        region=match["region"],
        service=match["service"],
        signed_headers=tuple(match["signed"].split(";")),
        signature=match["signature"],
    )


def check_scope(signed: SignedBy, service: str, region: str | None) -> Refusal | None:
    """The signature must name this upstream's service and region (when the host names one), host and date."""
    if signed.service != service:
        return Refusal(
            "InvalidSignatureException", f"Credential should be scoped to correct service: '{service}'"
        )
    if region is not None and signed.region != region:
        return Refusal(
            "InvalidSignatureException", f"Credential should be scoped to a valid region: '{region}'"
        )
    for name in _REQUIRED_SIGNED:
        if name not in signed.signed_headers:
            return Refusal("InvalidSignatureException", f"SignedHeaders must include '{name}'")
    return None


def check_date(signed: SignedBy, amz_date: str | None, now: datetime) -> Refusal | None:
    """x-amz-date must agree with the credential scope and lie within MAX_SKEW of now."""
    try:
        when = datetime.strptime(amz_date or "", "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return Refusal("IncompleteSignatureException", "x-amz-date is missing or malformed")
    if when.strftime("%Y%m%d") != signed.date:
        return Refusal("InvalidSignatureException", "Credential date does not match x-amz-date")
    if abs(now - when) > MAX_SKEW:
        return Refusal("InvalidSignatureException", "Signature expired: x-amz-date is too far from now")
    return None


def check_body_hash(headers: Mapping[str, str], body: bytes) -> Refusal | None:
    """A client-sent x-amz-content-sha256 must be the body's own hash (no UNSIGNED-PAYLOAD)."""
    claimed = headers.get("x-amz-content-sha256")
    if claimed is not None and not hmac.compare_digest(claimed, hashlib.sha256(body).hexdigest()):
        return Refusal("InvalidSignatureException", "x-amz-content-sha256 does not match the body")
    return None


def expected_signature(
    signed: SignedBy, secret: str, method: str, url: str, headers: Mapping[str, str], body: bytes
) -> str:
    """botocore's signature over the request as received, restricted to the headers the client signed."""
    kept = {name: headers[name] for name in signed.signed_headers if name in headers}
    request = AWSRequest(method=method, url=url, headers=kept, data=body)
    request.context["timestamp"] = headers["x-amz-date"]
    auth = SigV4Auth(Credentials(signed.access_key_id, secret), signed.service, signed.region)
    canonical = auth.canonical_request(request)
    return str(auth.signature(auth.string_to_sign(request, canonical), request))


def verify(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, str],
    service: str,
    region: str | None,
    now: datetime,
) -> SignedBy | Refusal:
    """Who signed this request (their access key id), or why it is refused. Header names are lower-case."""
    signed = parse_authorization(headers.get("authorization"))
    if isinstance(signed, Refusal):
        return signed
    secret = secrets.get(signed.access_key_id)
    if secret is None:
        return Refusal(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    refusal = (
        check_scope(signed, service, region)
        or check_date(signed, headers.get("x-amz-date"), now)
        or check_body_hash(headers, body)
    )
    if refusal is not None:
        return refusal
    if any(name not in headers for name in signed.signed_headers):
        return Refusal("InvalidSignatureException", "A signed header is missing from the request")
    expected = expected_signature(signed, secret, method, url, headers, body)
    if not hmac.compare_digest(expected, signed.signature):
        return Refusal(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        )
    return signed


# What a client's own signature added; all of it is replaced by the upstream's signature.
CLIENT_SIGNING_HEADERS = ("authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256")


def resign(
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    token: str | None,
    service: str,
    region: str,
) -> dict[str, str]:
    """The request's headers signed with the real credentials over the body as it is sent (fails closed:
    nothing of the client's signature survives). Called at the moment the request is written upstream."""
    kept = {name: value for name, value in headers.items() if name.lower() not in CLIENT_SIGNING_HEADERS}
    request = AWSRequest(method=method, url=url, headers=kept, data=body)
    SigV4Auth(Credentials(access_key, secret_key, token), service, region).add_auth(request)
    return {name: str(value) for name, value in request.headers.items()}
