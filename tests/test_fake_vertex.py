"""The fake Vertex endpoint and Google token endpoint: the end-to-end verdicts rest on them refusing what
Google refuses (a token it did not issue, or one past its lifetime) and answering Vertex's wire."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from state.google_token import mint
from tests.fake_provider import FakeProvider, Usage
from tests.fake_vertex import MODEL, PROJECT, REGION

BASE = f"/v1/projects/{PROJECT}/locations/{REGION}/publishers/anthropic/models"
BODY = {
    "anthropic_version": "vertex-2023-10-16",
    "max_tokens": 8,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as server:
        yield server


def call(fake: FakeProvider, path: str, token: str | None, body: dict[str, object] = BODY) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{fake.base_url}{path}", json=body, headers=headers, timeout=5)


def token(fake: FakeProvider) -> str:
    return mint(json.dumps(fake.google.service_account_info(fake.token_uri)), verify=True).access_token


def test_a_minted_token_gets_anthropics_answer_with_the_model_from_the_path(fake: FakeProvider) -> None:
    fake.next(usage=Usage(input_tokens=5, output_tokens=3))
    answer = call(fake, f"{BASE}/{MODEL}:rawPredict", token(fake))
    assert answer.status_code == 200
    message = answer.json()
    assert message["type"] == "message" and message["model"] == MODEL
    assert (message["usage"]["input_tokens"], message["usage"]["output_tokens"]) == (5, 3)


def test_a_stream_is_anthropics_sse(fake: FakeProvider) -> None:
    answer = call(fake, f"{BASE}/{MODEL}:streamRawPredict", token(fake), {**BODY, "stream": True})
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert "event: message_start" in answer.text and "event: message_stop" in answer.text


def test_the_count_is_answered(fake: FakeProvider) -> None:
    answer = call(
        fake, f"{BASE}/count-tokens:rawPredict", token(fake), {**BODY, "model": "claude-sonnet-4-5"}
    )
    assert answer.json() == {"input_tokens": 21}


@pytest.mark.parametrize("presented", [None, "ya29.not-issued-here", "expired"])
def test_a_token_google_did_not_issue_or_that_expired_is_unauthenticated(
    fake: FakeProvider, presented: str | None
) -> None:
    if presented == "expired":
        fake.google.lifetime_s = 0
        presented = token(fake)
    answer = call(fake, f"{BASE}/{MODEL}:rawPredict", presented)
    assert answer.status_code == 401
    assert answer.json()["error"]["status"] == "UNAUTHENTICATED"


def test_a_scripted_quota_answer_is_vertexs(fake: FakeProvider) -> None:
    fake.next(status=429)
    answer = call(fake, f"{BASE}/{MODEL}:rawPredict", token(fake))
    assert answer.status_code == 429
    error = answer.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED" and "aiplatform.googleapis.com" in error["message"]
