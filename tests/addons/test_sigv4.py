"""A botocore-signed request is verified with the client's placeholder secret; anything else is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from addons.sigv4 import Refusal, SignedBy, resign, verify

HOST = "bedrock-runtime.us-east-1.amazonaws.com"
URL = f"https://{HOST}/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke"
BODY = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 8, "messages": []}).encode()
SECRETS = {"AKIAPLACEHOLDER0001": "placeholder-secret-one"}


def signed(
    key: str = "AKIAPLACEHOLDER0001",
    secret: str = "placeholder-secret-one",
    *,
    region: str = "us-east-1",
    service: str = "bedrock",
    body: bytes = BODY,
) -> tuple[dict[str, str], datetime]:
    request = AWSRequest(method="POST", url=URL, data=body, headers={"content-type": "application/json"})
    SigV4Auth(Credentials(key, secret), service, region).add_auth(request)
    headers = {name.lower(): value for name, value in request.headers.items()}
    headers["host"] = HOST
    when = datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return headers, when


def check(
    headers: dict[str, str], now: datetime, *, body: bytes = BODY, url: str = URL
) -> SignedBy | Refusal:
    return verify(
        method="POST",
        url=url,
        headers=headers,
        body=body,
        secrets=SECRETS,
        service="bedrock",
        region="us-east-1",
        now=now,
    )


def test_a_request_signed_with_the_placeholder_pair_is_attributed_to_its_key_id() -> None:
    headers, now = signed()
    verdict = check(headers, now)
    assert isinstance(verdict, SignedBy)
    assert verdict.access_key_id == "AKIAPLACEHOLDER0001"


def test_an_unsigned_request_is_refused() -> None:
    headers, now = signed()
    del headers["authorization"]
    assert check(headers, now) == Refusal(
        "MissingAuthenticationTokenException", "Missing Authentication Token"
    )


def test_an_unknown_key_id_is_refused_as_botocore_expects() -> None:
    headers, now = signed(key="AKIASOMEONEELSE0002")
    verdict = check(headers, now)
    assert isinstance(verdict, Refusal) and verdict.exception == "UnrecognizedClientException"


def test_a_wrong_secret_is_refused() -> None:
    headers, now = signed(secret="guessed")
    verdict = check(headers, now)
    assert isinstance(verdict, Refusal) and "does not match" in verdict.message


def test_a_replayed_signature_with_a_changed_body_is_refused() -> None:
    headers, now = signed()
    verdict = check(headers, now, body=BODY.replace(b"8", b"9"))
    assert isinstance(verdict, Refusal) and verdict.exception == "InvalidSignatureException"


def test_a_signature_for_another_host_is_refused() -> None:
    headers, now = signed()
    headers["host"] = "bedrock-runtime.us-west-2.amazonaws.com"
    verdict = check(headers, now)
    assert isinstance(verdict, Refusal) and verdict.exception == "InvalidSignatureException"


def test_a_signature_for_another_region_or_service_is_refused() -> None:
    for kwargs in ({"region": "eu-west-1"}, {"service": "s3"}):
        headers, now = signed(**kwargs)  # type: ignore[arg-type]
        verdict = check(headers, now)
        assert isinstance(verdict, Refusal) and "scoped" in verdict.message


def test_signed_headers_must_cover_host_and_date() -> None:
    headers, now = signed()
    headers["authorization"] = headers["authorization"].replace(
        "SignedHeaders=content-type;host;x-amz-date", "SignedHeaders=content-type;x-amz-date"
    )
    verdict = check(headers, now)
    assert isinstance(verdict, Refusal) and "'host'" in verdict.message


def test_a_date_too_far_from_now_is_refused() -> None:
    headers, when = signed()
    verdict = check(headers, when + timedelta(minutes=16))
    assert isinstance(verdict, Refusal) and "expired" in verdict.message
    assert isinstance(check(headers, when + timedelta(minutes=14)), SignedBy)


def test_a_body_hash_header_must_match_the_body() -> None:
    headers, now = signed()
    headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    verdict = check(headers, now)
    assert isinstance(verdict, Refusal) and "x-amz-content-sha256" in verdict.message


def test_a_malformed_authorization_header_is_refused() -> None:
    headers, now = signed()
    headers["authorization"] = "AWS4-HMAC-SHA256 garbage" + "x" * 10_000
    verdict = check(headers, now)
    assert isinstance(verdict, Refusal) and verdict.exception == "IncompleteSignatureException"


def test_a_request_is_resigned_with_the_real_credentials_over_the_rewritten_body() -> None:
    client_headers, now = signed()
    rewritten = BODY.replace(b'"messages"', b'"system": "policy", "messages"')
    out = resign(
        method="POST", url=URL, headers=client_headers, body=rewritten, access_key="AKIAREAL0000000001",
        secret_key="real-secret", token="real-token", service="bedrock", region="us-east-1",
    )  # fmt: skip
    assert "AKIAPLACEHOLDER0001" not in out["Authorization"] and out["X-Amz-Security-Token"] == "real-token"
    lowered = {name.lower(): value for name, value in out.items()}
    real = {"AKIAREAL0000000001": "real-secret"}
    verdict = verify(
        method="POST", url=URL, headers=lowered, body=rewritten, secrets=real, service="bedrock",
        region="us-east-1", now=now,
    )  # fmt: skip
    assert isinstance(verdict, SignedBy) and verdict.access_key_id == "AKIAREAL0000000001"
    stale = verify(
        method="POST", url=URL, headers=lowered, body=BODY, secrets=real, service="bedrock",
        region="us-east-1", now=now,
    )  # fmt: skip
    assert isinstance(stale, Refusal)
