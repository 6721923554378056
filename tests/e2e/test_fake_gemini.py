"""The fake provider's Gemini side, and the Gemini fixtures, checked against the real `google-genai` SDK and
genai-prices' own reading of Gemini usage. No proxy: the SDK talks plain HTTP to the session's plain fake
(`plain_fake`), pointed at it with `HttpOptions.base_url` (the fake tells Gemini from the path,
`/v1beta/models/{model}:{method}`, or from `x-goog-api-key`). The same SDK through a real mitmdump is
tests/e2e/test_gemini_wire.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from genai_prices import Usage as PricedUsage
from genai_prices import calc_price, extract_usage
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.fake_provider import DEFAULT_TEXT, GEMINI_HOST, FakeProvider, Usage, provider_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gemini"
MODEL = "gemini-2.5-flash"
BODY = {"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]}
KEY = "AIzaSyFAKE-KEY-FOR-THE-FAKE-000000000000"


def _answers() -> list[Any]:
    return [pytest.param(path, id=path.stem) for path in sorted(FIXTURES.glob("*.json"))]


def _errors() -> list[Any]:
    return [pytest.param(path, id=path.stem) for path in sorted(FIXTURES.glob("error_*.json"))]


@pytest.fixture
def fake(plain_fake: FakeProvider) -> FakeProvider:
    return plain_fake


@pytest.fixture
def client(fake: FakeProvider) -> Iterator[genai.Client]:
    options = types.HttpOptions(base_url=fake.base_url, client_args={"trust_env": False}, timeout=10_000)
    with genai.Client(api_key=KEY, http_options=options) as sdk:
        yield sdk


@pytest.fixture
def http(fake: FakeProvider) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, headers={"host": GEMINI_HOST}, trust_env=False) as plain:
        yield plain


def load(path: Path) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(path.read_text())
    return answer


def sse_chunks(raw: bytes) -> list[dict[str, Any]]:
    records = [r for r in raw.replace(b"\r\n", b"\n").split(b"\n\n") if r.strip()]
    assert all(r.startswith(b"data: ") for r in records), raw[:200]
    return [json.loads(r[len(b"data: ") :]) for r in records]


# The fixtures.


@pytest.mark.parametrize("path", _answers())
def test_every_fixture_says_where_its_shape_comes_from(path: Path) -> None:
    assert len(load(path)["_provenance"]) > 200


def test_the_stream_fixture_is_cumulative_and_ends_once() -> None:
    chunks = sse_chunks((FIXTURES / "stream_thinking_cached.sse").read_bytes())
    assert len(chunks) == load(FIXTURES / "stream_thinking_cached.json")["expect"]["chunks"]
    candidates = [c["usageMetadata"].get("candidatesTokenCount", 0) for c in chunks]
    assert candidates == sorted(candidates) and candidates[0] == 0 < candidates[-1]
    assert [bool(c["candidates"][0].get("finishReason")) for c in chunks] == [False] * 4 + [True]
    assert len({c["responseId"] for c in chunks}) == 1


@pytest.mark.parametrize("name", ["generate_content_thinking_cached.json", "stream_thinking_cached.json"])
def test_the_counts_add_up_and_agree_with_genai_prices(name: str) -> None:
    """total = prompt + candidates + thoughts (+ tool-use); the cached tokens are inside the prompt; and
    genai-prices' own Gemini extractor reads the same input, cache and output as the fixture expects."""
    answer = load(FIXTURES / name)
    if "stream" in answer:
        body = sse_chunks((FIXTURES / answer["stream"]).read_bytes())[-1]
    else:
        body = answer["body"]
    meta = body["usageMetadata"]
    parts = ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount", "toolUsePromptTokenCount")
    assert meta["totalTokenCount"] == sum(meta.get(part, 0) for part in parts)
    assert meta["cachedContentTokenCount"] <= meta["promptTokenCount"]

    expect = answer["expect"]
    extracted = extract_usage(body, provider_id="google")
    assert extracted.model is not None and extracted.model.id == expect["model"]
    assert extracted.usage.input_tokens == expect["input_tokens"] + expect["cache_read_tokens"]
    assert extracted.usage.cache_read_tokens == expect["cache_read_tokens"]
    assert extracted.usage.output_tokens == expect["output_tokens"]
    assert float(extracted.calc_price().total_price) == pytest.approx(expect["cost_usd"])
    # The same price from sluice's columns, the way state/pricing.py hands them to genai-prices.
    columns = PricedUsage(
        input_tokens=expect["input_tokens"] + expect["cache_read_tokens"],
        cache_read_tokens=expect["cache_read_tokens"],
        output_tokens=expect["output_tokens"],
    )
    priced = calc_price(columns, expect["model"], provider_id="google")
    assert float(priced.total_price) == pytest.approx(expect["cost_usd"])


@pytest.mark.parametrize("path", _errors())
def test_each_error_fixture_is_googles_envelope_and_the_sdk_reads_it(
    path: Path, fake: FakeProvider, client: genai.Client
) -> None:
    answer = load(path)
    error = answer["body"]["error"]
    assert error["code"] == answer["status"] and error["status"].isupper()
    assert "retry-after" not in {name.lower() for name in answer["headers"]}
    fake.next(status=answer["status"], body=answer["body"])

    with pytest.raises(genai_errors.APIError) as raised:
        client.models.generate_content(model=MODEL, contents="Say hello.")

    assert (raised.value.code, raised.value.status) == (answer["status"], error["status"])
    assert raised.value.message == error["message"]


def test_the_sdk_reads_the_recorded_answers(fake: FakeProvider, client: genai.Client) -> None:
    answer = load(FIXTURES / "generate_content_thinking_cached.json")
    fake.next(body=answer["body"])
    stream = load(FIXTURES / "stream_thinking_cached.json")
    raw = (FIXTURES / stream["stream"]).read_bytes()
    fake.next(body=raw, headers=[("content-type", "text/event-stream")])

    plain = client.models.generate_content(model=MODEL, contents="Say hello.")
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="Say hello."))

    assert plain.usage_metadata is not None and plain.usage_metadata.thoughts_token_count == 389
    assert plain.text == answer["body"]["candidates"][0]["content"]["parts"][1]["text"]
    assert len(chunks) == stream["expect"]["chunks"]
    last = chunks[-1].usage_metadata
    assert last is not None and last.candidates_token_count == 38


# The fake, as the SDK sees it.


def test_the_fake_answers_the_sdk_with_thoughts_and_cached_tokens(fake: FakeProvider, client: genai.Client):
    usage = Usage(input_tokens=100, cache_read_tokens=1024, output_tokens=60, reasoning_tokens=40)
    fake.next(thinking="Thinking it over.", usage=usage)

    answer = client.models.generate_content(model=MODEL, contents="Say hello.")

    assert answer.text == DEFAULT_TEXT
    assert answer.model_version == MODEL and answer.response_id
    meta = answer.usage_metadata
    assert meta is not None
    assert (meta.prompt_token_count, meta.cached_content_token_count) == (1124, 1024)
    assert (meta.candidates_token_count, meta.thoughts_token_count, meta.total_token_count) == (20, 40, 1184)
    [request] = fake.requests
    assert request.credential() == KEY and request.header("x-goog-api-key") == KEY


def test_the_fake_streams_cumulative_usage_to_the_sdk(fake: FakeProvider, client: genai.Client):
    usage = Usage(input_tokens=91, cache_read_tokens=2048, output_tokens=349, reasoning_tokens=311)
    fake.next(thinking="The user wants a greeting.", usage=usage)

    chunks = list(client.models.generate_content_stream(model=MODEL, contents="Say hello."))

    [request] = fake.requests
    assert request.query("alt") == "sse"
    assert request.response is not None
    assert (request.response.header("content-type") or "").startswith("text/event-stream")
    assert request.response.body.endswith(b"\r\n\r\n")
    last = chunks[-1].usage_metadata
    assert last is not None
    assert (last.candidates_token_count, last.thoughts_token_count, last.total_token_count) == (38, 311, 2488)
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert all(c.candidates[0].finish_reason is None for c in chunks[:-1])


def test_a_stream_cut_by_an_error_ends_with_googles_envelope(fake: FakeProvider, http: httpx.Client):
    fake.next(error_after=2, error_type="UNAVAILABLE")

    raw = http.post(f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse", json=BODY).content

    *answer, error = sse_chunks(raw)
    assert len(answer) == 2
    assert error == {
        "error": {
            "code": 503,
            "message": "The model is overloaded. Please try again later.",
            "status": "UNAVAILABLE",
        }
    }


def test_without_alt_sse_the_stream_is_one_json_array(fake: FakeProvider, http: httpx.Client):
    answer = http.post(f"/v1beta/models/{MODEL}:streamGenerateContent", json=BODY)

    assert answer.headers["content-type"].startswith("application/json")
    chunks = answer.json()
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == DEFAULT_TEXT


def test_a_429_names_its_quota_and_delay_and_no_header_does(fake: FakeProvider, http: httpx.Client):
    fake.next(status=429, retry_delay="45.837906927s", quota_id="GenerateRequestsPerDayPerProjectPerModel")

    answer = http.post(f"/v1beta/models/{MODEL}:generateContent", json=BODY)

    assert answer.status_code == 429
    assert "retry-after" not in answer.headers and not any("ratelimit" in name for name in answer.headers)
    error = answer.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert "Please retry in 45.837906927s." in error["message"]
    kinds = {detail["@type"].rsplit(".", 1)[-1]: detail for detail in error["details"]}
    assert kinds["RetryInfo"]["retryDelay"] == "45.837906927s"
    violation = kinds["QuotaFailure"]["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel"
    assert violation["quotaDimensions"] == {"location": "global", "model": MODEL}
    # The generated answer has the recorded answer's shape.
    recorded = load(FIXTURES / "error_429_resource_exhausted.json")["body"]["error"]
    assert [d["@type"] for d in error["details"]] == [d["@type"] for d in recorded["details"]]


def test_a_429_can_leave_retry_info_out(fake: FakeProvider, http: httpx.Client):
    fake.next(status=429, retry_delay=None)

    error = http.post(f"/v1beta/models/{MODEL}:generateContent", json=BODY).json()["error"]

    assert not any(d["@type"].endswith("RetryInfo") for d in error["details"])
    assert "Please retry" not in error["message"]


def test_keys_are_checked_in_the_header_or_the_query_the_way_google_refuses_them(
    fake: FakeProvider, http: httpx.Client
):
    fake.accepted_credentials = {KEY}
    path = f"/v1beta/models/{MODEL}:generateContent"

    by_header = http.post(path, json=BODY, headers={"x-goog-api-key": KEY})
    by_query = http.post(path, params={"key": KEY}, json=BODY)
    wrong = http.post(path, params={"key": "AIzaSyWRONG"}, json=BODY)
    missing = http.post(path, json=BODY)

    assert (by_header.status_code, by_query.status_code) == (200, 200)
    assert (wrong.status_code, wrong.json()["error"]["status"]) == (400, "INVALID_ARGUMENT")
    assert wrong.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert (missing.status_code, missing.json()["error"]["status"]) == (403, "PERMISSION_DENIED")
    assert [r.credential() for r in fake.requests] == [KEY, KEY, "AIzaSyWRONG", None]


def test_a_request_without_contents_is_refused_like_google_does(fake: FakeProvider, http: httpx.Client):
    answer = http.post(f"/v1beta/models/{MODEL}:generateContent", json={"contents": []})

    assert answer.status_code == 400
    assert answer.json()["error"]["message"].startswith("* GenerateContentRequest.contents")


def test_count_tokens_and_the_models_list(fake: FakeProvider, client: genai.Client):
    fake.set_default(usage=Usage(input_tokens=7, cache_read_tokens=0))

    counted = client.models.count_tokens(model=MODEL, contents="Say hello.")
    listed = [model.name for model in client.models.list()]

    assert counted.total_tokens == 7
    assert listed == [f"models/{MODEL}"]


def test_gemini_is_told_from_the_path_or_the_host() -> None:
    assert provider_for(f"/v1/models/{MODEL}:generateContent", "127.0.0.1:8443") == "gemini"
    assert provider_for("/v1beta/models", GEMINI_HOST) == "gemini"
    assert provider_for("/v1/models", "api.openai.com") == "openai"
    assert provider_for("/v1/models", "api.anthropic.com") == "anthropic"
