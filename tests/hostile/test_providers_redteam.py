"""Red team of the Gemini provider and the registry: keys in the URL (duplicated, spelt otherwise, in both
places) and in every provider's key header, what the operator's log keeps of a refused request, and paths
spelt so that sluice would not recognise the billed endpoint the provider serves.

GUARD tests were tried against a real mitmdump and hold today; "Was a gap" tests got through first and
are fixed since. Every test runs with the hostile suite's autouse check: no trap receives a real key.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e import harness
from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import Proxy
from tests.e2e.test_gemini_wire import CLIENT_KEY, ENV, GEMINI_KEY, GEMINI_UPSTREAM
from tests.fake_provider import GEMINI_HOST, FakeProvider, RecordedRequest

pytestmark = pytest.mark.e2e

# A real-looking Gemini key a client sends by mistake (or to probe): it is not a client key.
STRAY_KEY = "AIzaSyCLIENTS-OWN-REAL-KEY-11111111111"
CONFIG = GEMINI_UPSTREAM
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
BODY = json.dumps({"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]})


@pytest.fixture(scope="module")
def gemini(module_start_proxy: ProxyFactory) -> Proxy:
    return module_start_proxy(config_toml=CONFIG, env=ENV)


def call(proxy: Proxy, query: str, *headers: str) -> harness.CurlResult:
    url = f"https://{GEMINI_HOST}{GENERATE}?{query}"
    args = ["-H", "content-type: application/json", *[a for h in headers for a in ("-H", h)]]
    return harness.curl(proxy, url, *args, "--data-binary", BODY)


def only_request(fake: FakeProvider) -> RecordedRequest:
    [request] = [r for r in fake.wait_for_requests(1) if ":" in r.path]
    return request


def assert_sent_once_in_the_header(request: RecordedRequest) -> None:
    assert request.header_values("x-goog-api-key") == [GEMINI_KEY]
    assert GEMINI_KEY not in request.target
    assert CLIENT_KEY not in request.target
    assert "key=" not in request.target.lower()


@pytest.mark.parametrize(
    "query",
    [
        f"key={CLIENT_KEY}&key=another",  # duplicated: every value goes
        f"key=another&key={CLIENT_KEY}&alt=json",
        f"%6Bey={CLIENT_KEY}",  # percent-encoded name: decoded as mitmproxy and Google decode it
    ],
)
def test_guard_every_spelling_of_key_in_the_query_leaves_the_url(
    gemini: Proxy, fake: FakeProvider, query: str
) -> None:
    """GUARD: whatever the spelling, the client key in the URL is checked and the URL leaves without any."""
    fake.accepted_credentials = {GEMINI_KEY}

    result = call(gemini, query)

    if query.startswith("key=another"):
        assert result.status == 401, result.body  # the first value is the key presented: not a client's
        assert fake.requests == []
        return
    assert result.status == 200, result.body
    assert_sent_once_in_the_header(only_request(fake))


def test_guard_a_key_in_header_and_query_sends_the_real_key_once(gemini: Proxy, fake: FakeProvider) -> None:
    """GUARD: a client key in the header and another value in the URL: the header decides, the URL is
    cleaned, and the real key is written once, in the header."""
    fake.accepted_credentials = {GEMINI_KEY}

    result = call(gemini, f"key={STRAY_KEY}", f"x-goog-api-key: {CLIENT_KEY}")

    assert result.status == 200, result.body
    request = only_request(fake)
    assert_sent_once_in_the_header(request)
    assert STRAY_KEY not in request.target


def test_guard_an_upper_case_key_parameter_is_not_a_key(gemini: Proxy, fake: FakeProvider) -> None:
    """GUARD: `KEY=` is not Gemini's parameter (names are case-sensitive): it is not taken as a client key,
    and a request carrying only it is refused."""
    result = call(gemini, f"KEY={CLIENT_KEY}")

    assert result.status == 401, result.body
    assert fake.requests == []


def test_was_a_gap_a_refused_key_in_the_url_is_not_logged(gemini: Proxy, fake: FakeProvider) -> None:
    """Was a gap: the gate logged a refused request's full URL, and with it the key a client put in
    `?key=` (a real Gemini key sent by mistake lands in the operator's log)."""
    result = call(gemini, f"key={STRAY_KEY}&alt=json")

    assert result.status == 401, result.body
    assert fake.requests == []
    gemini.wait_for_log("no known client key")
    assert STRAY_KEY not in gemini.log_text()


# A budget no call fits in: a call sluice recognises is refused before the upstream; one it does not
# recognise would reach the provider unbudgeted and unrecorded.
BUDGET = 'budget = { usd = 0.000001, period = "day" }'
BUDGETED = (
    GEMINI_UPSTREAM.replace('name = "alice"', f'name = "alice"\n{BUDGET}')
    + """
[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:SLUICE_E2E_ANT"]
"""
)
ANT_BODY = json.dumps(
    {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
)


@pytest.fixture(scope="module")
def budgeted(module_start_proxy: ProxyFactory) -> Proxy:
    return module_start_proxy(
        config_toml=BUDGETED, env={**ENV, "SLUICE_E2E_ANT": "sk-ant-api03-REAL-redteam-0000"}
    )


@pytest.mark.parametrize(
    "url",
    [
        # Dot segments and percent-encoding that an HTTP server resolves to a billed endpoint (RFC 3986
        # §5.2.4, §6.2.2): sluice must see the endpoint the provider will serve.
        "https://api.anthropic.com/v1/messages/count_tokens/..",
        "https://api.anthropic.com/v1/x/../messages",
        "https://api.anthropic.com/v1/%6Dessages",
        f"https://{GEMINI_HOST}/v1beta/models/gemini-2.5-flash%3AgenerateContent",
        f"https://{GEMINI_HOST}/v1beta/models/gemini-2.5-flash:generateContent/.",
    ],
)
def test_was_a_gap_a_disguised_path_does_not_skip_the_budget(
    budgeted: Proxy, fake: FakeProvider, url: str
) -> None:
    """Was a gap: the endpoint was matched on the raw path, so a billed call spelt with dot segments or
    percent-escapes was not recognised: no budget, no row, and the provider (which normalises the path)
    billed it."""
    body = BODY if GEMINI_HOST in url else ANT_BODY
    result = harness.curl(
        budgeted,
        url,
        "--path-as-is",
        "-H",
        "content-type: application/json",
        "-H",
        f"x-api-key: {CLIENT_KEY}",
        "-H",
        "anthropic-version: 2023-06-01",
        "--data-binary",
        body,
    )

    assert result.status == 429, result.body
    assert b"budget" in result.body
    assert fake.requests == []


def test_guard_a_gemini_key_header_on_anthropics_host_goes_nowhere(
    budgeted: Proxy, fake: FakeProvider
) -> None:
    """GUARD: a client key sent as `x-goog-api-key` to an Anthropic upstream is a client key like any
    other (the budget still holds the call), and Anthropic's header policy keeps Google's header off the
    wire: the client key never reaches the provider."""
    result = harness.curl(
        budgeted,
        "https://api.anthropic.com/v1/messages",
        "-H",
        "content-type: application/json",
        "-H",
        f"x-goog-api-key: {CLIENT_KEY}",
        "-H",
        "anthropic-version: 2023-06-01",
        "--data-binary",
        ANT_BODY,
    )

    assert result.status == 429, result.body  # known client, over its budget: not a 401
    assert fake.requests == []


def test_guard_every_key_header_the_client_sent_is_replaced(gemini: Proxy, fake: FakeProvider) -> None:
    """GUARD: a client key in each of the headers some provider reads: Gemini gets the real key once, in
    its own header, and none of the others."""
    fake.accepted_credentials = {GEMINI_KEY}

    result = call(
        gemini,
        "alt=json",
        f"x-api-key: {CLIENT_KEY}",
        f"authorization: Bearer {CLIENT_KEY}",
        f"x-goog-api-key: {CLIENT_KEY}",
    )

    assert result.status == 200, result.body
    request = only_request(fake)
    assert_sent_once_in_the_header(request)
    assert request.header_values("x-api-key") == []
    assert request.header_values("authorization") == []
