"""The fake Bedrock (tests/fake_bedrock.py) authenticates as Bedrock does: a SigV4 signature recomputed by
botocore from the secret it holds, refused with Bedrock's 403s when it does not match; a Bedrock API key as
a bearer token. Its event-stream frames are the ones boto3 reads."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import boto3
import botocore.exceptions
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from tests.fake_bedrock import BEDROCK_HOST, authenticate
from tests.fake_provider import DEFAULT_TEXT, FakeProvider, RecordedRequest

AKID, SECRET, TOKEN = "AKIAFAKEBEDROCK0001", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYFAKEKEY", "IQoJb3JpZ2luX2VjEFAKE"
PATH = "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse"
BODY = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'


def signed(
    secret: str = SECRET, token: str | None = None, body: bytes = BODY, at: datetime | None = None
) -> RecordedRequest:
    """A request as botocore signs it, recorded as the fake receives it."""
    request = AWSRequest(
        method="POST",
        url=f"https://{BEDROCK_HOST}{PATH}",
        data=body,
        headers={"content-type": "application/json"},
    )
    signer = SigV4Auth(Credentials(AKID, secret, token), "bedrock", "us-east-1")
    if at is None:
        signer.add_auth(request)
    else:
        request.context["timestamp"] = at.strftime("%Y%m%dT%H%M%SZ")
        request.headers["X-Amz-Date"] = request.context["timestamp"]
        if token:
            request.headers["X-Amz-Security-Token"] = token
        cr = signer.canonical_request(request)
        signature = signer.signature(signer.string_to_sign(request, cr), request)
        request.headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={AKID}/{signer.scope(request).split('/', 1)[1]}, "
            f"SignedHeaders={signer.signed_headers(signer.headers_to_sign(request))}, Signature={signature}"
        )
    headers = [("host", BEDROCK_HOST), *((k, v) for k, v in request.headers.items())]
    return RecordedRequest("POST", PATH, PATH, "HTTP/1.1", headers, body, True, BEDROCK_HOST, time.time())


KNOWN = {AKID: (SECRET, None)}


def test_a_signature_made_with_the_secret_is_accepted():
    assert authenticate(signed(), None, KNOWN) is None


def test_a_signature_made_with_another_secret_is_bedrocks_invalid_signature():
    refusal = authenticate(signed(secret="not-the-secret"), None, KNOWN)
    assert refusal is not None and (refusal.status, refusal.kind) == (403, "InvalidSignatureException")


def test_a_body_changed_after_signing_fails_the_signature():
    request = signed()
    request.body = BODY.replace(b"hi", b"ho")
    refusal = authenticate(request, None, KNOWN)
    assert refusal is not None and refusal.kind == "InvalidSignatureException"


def test_an_unknown_key_id_or_a_missing_credential_is_refused():
    refusal = authenticate(signed(), None, {})
    assert refusal is not None and (refusal.status, refusal.kind) == (403, "UnrecognizedClientException")
    bare = signed()
    bare.headers = [(k, v) for k, v in bare.headers if k.lower() != "authorization"]
    refusal = authenticate(bare, None, KNOWN)
    assert refusal is not None and refusal.kind == "MissingAuthenticationTokenException"


def test_an_old_signature_has_expired():
    old = signed(at=datetime.now(UTC) - timedelta(minutes=20))
    refusal = authenticate(old, None, KNOWN)
    assert refusal is not None and refusal.message.startswith("Signature expired")
    assert authenticate(signed(at=datetime.now(UTC) - timedelta(minutes=2)), None, KNOWN) is None


def test_a_session_token_must_be_the_keys():
    with_token = {AKID: (SECRET, TOKEN)}
    assert authenticate(signed(token=TOKEN), None, with_token) is None
    refusal = authenticate(signed(token="another-token"), None, with_token)
    assert refusal is not None and refusal.status == 403


def test_a_bearer_key_is_accepted_only_when_known():
    def bearer(key: str) -> RecordedRequest:
        return RecordedRequest(
            "POST", PATH, PATH, "HTTP/1.1", [("authorization", f"Bearer {key}")], BODY, True, None, 0.0
        )

    assert authenticate(bearer("ABSKgood"), {"ABSKgood"}, {}) is None
    refusal = authenticate(bearer("ABSKbad"), {"ABSKgood"}, {})
    assert refusal is not None and refusal.kind == "UnrecognizedClientException"


@pytest.fixture
def fake() -> FakeProvider:
    with FakeProvider() as server:
        server.aws_credentials = dict(KNOWN)
        yield server


def client(fake: FakeProvider, secret: str = SECRET):
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=f"{fake.base_url}",
        aws_access_key_id=AKID,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}),
    )


def test_boto3_signing_with_the_key_pair_is_answered_and_streams_frames(fake: FakeProvider):
    bedrock = client(fake)
    model = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    answer = bedrock.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert answer["output"]["message"]["content"] == [{"text": DEFAULT_TEXT}]
    events = list(
        bedrock.converse_stream(modelId=model, messages=[{"role": "user", "content": [{"text": "hi"}]}])[
            "stream"
        ]
    )
    assert (
        "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
        == DEFAULT_TEXT
    )
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        client(fake, secret="wrong").converse(
            modelId=model, messages=[{"role": "user", "content": [{"text": "hi"}]}]
        )
    assert raised.value.response["Error"]["Code"] == "InvalidSignatureException"
    fake.next(status=429)
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        bedrock.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
