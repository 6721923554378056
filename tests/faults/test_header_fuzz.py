"""Header fuzz, both ways: random headers never get past the allow-lists and never break the framing.

Requests go out over a raw TLS tunnel through the proxy (exact bytes, any casing, repeated names); responses
come from the fake with random headers appended. What the fake received and what the client received are
checked against rules/headers.py's default policies: every header that crossed is allowed (or is framing),
every allowed fuzzed header crossed with its value intact, and both bodies arrived byte for byte.
Seeded: a failure names its seed and iteration. Default run: 60 exchanges; `--soak`: 1,500.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from rules.headers import (
    FRAMING_HEADERS,
    HOP_BY_HOP_HEADERS,
    HeaderAllowList,
    default_request_policy,
    default_response_policy,
)
from rules.providers import provider
from tests.e2e.harness import Proxy
from tests.fake_provider import FakeProvider
from tests.faults.support import (
    ANTHROPIC_HOST,
    OPENAI_HOST,
    assert_no_tracebacks,
    open_tunnel,
    read_response,
    request_bytes,
)

pytestmark = pytest.mark.e2e

SEED = 8_2024
TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
# Names the fuzz leaves alone: framing and what the test's own request needs to be understood (the host,
# the body's type and length, the credential), and what changes how a message is read rather than what
# it says (Expect, Upgrade, Content-Encoding, Accept-Encoding, Trailer). Connection is fuzzed on its own.
RESERVED = {
    "host",
    "content-length",
    "transfer-encoding",
    "content-type",
    "content-encoding",
    "accept-encoding",
    "expect",
    "upgrade",
    "trailer",
    "connection",
    "x-api-key",
    "authorization",
    "date",
}
# Names from every part of the policies: allowed families, the deny list, hop-by-hop, near misses.
FAMILIES = [
    "anthropic-",
    "anthropic-ratelimit-",
    "x-anthropic-",
    "x-claude-",
    "x-claude-code-",
    "x-stainless-",
    "openai-",
    "x-ratelimit-",
    "proxy-",
    "x-forwarded-",
    "x-sluice-",
    "x-",
    "anthropic",  # no dash: a near miss of the family
    "xanthropic-",
]
NAMED = [
    "cookie",
    "set-cookie",
    "set-cookie2",
    "forwarded",
    "via",
    "x-real-ip",
    "keep-alive",
    "te",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "x-app",
    "x-client-app",
    "x-client-request-id",
    "idempotency-key",
    "user-agent",
    "accept",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "request-id",
    "x-request-id",
    "cache-control",
    "vary",
    "server",
    "www-authenticate",
    "strict-transport-security",
]


def random_name(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        name = "".join(rng.choice(TCHAR) for _ in range(rng.randint(1, 24)))
    elif roll < 0.75:
        name = rng.choice(FAMILIES) + "".join(rng.choice(TCHAR) for _ in range(rng.randint(0, 12)))
    else:
        name = rng.choice(NAMED)
    name = "".join(c.upper() if rng.random() < 0.3 else c for c in name)
    return name if name.lower() not in RESERVED else random_name(rng)


def random_value(rng: random.Random) -> str:
    """Visible ASCII, inner spaces and tabs, obs-text (RFC 9110 §5.5); never CR, LF or NUL, never padded."""
    if rng.random() < 0.05:
        return ""
    alphabet = [chr(c) for c in range(0x21, 0x7F)] + [" ", "\t"] + [chr(c) for c in range(0x80, 0x100)]
    value = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
    # Stripped of everything Python counts as whitespace (NBSP, NEL too): the fake reads values with
    # str.strip(), which is stricter than the OWS of RFC 9110 §5.6.3.
    return value.strip() or "v"


def random_headers(rng: random.Random, count: int) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for _ in range(count):
        name = random_name(rng)
        headers.append((name, random_value(rng)))
        if rng.random() < 0.15:  # the same name again, other casing, other value
            headers.append((name.swapcase(), random_value(rng)))
    if rng.random() < 0.3:
        # Connection naming some of them (RFC 9110 §7.6.1): those become hop-by-hop, whatever the policy.
        listed = rng.sample([name for name, _ in headers], k=min(len(headers), rng.randint(1, 3)))
        headers.insert(rng.randrange(len(headers) + 1), ("Connection", ", ".join(listed)))
    return headers


def connection_listed(headers: list[tuple[str, str]]) -> set[str]:
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }


def crosses(name: str, policy: HeaderAllowList, listed: set[str]) -> bool:
    """Whether the proxy must pass a header (the oracle, from the policy and RFC 9110 §7.6.1)."""
    lowered = name.lower()
    if lowered in FRAMING_HEADERS:
        return True
    if lowered in HOP_BY_HOP_HEADERS or lowered in listed or lowered == "connection":
        return False
    return policy.permits(name)


@dataclass
class Exchange:
    provider: str
    host: str
    path: str
    body: bytes
    stream: bool


def random_exchange(rng: random.Random, n: int) -> Exchange:
    provider = rng.choice(["anthropic", "openai"])
    stream = rng.random() < 0.5
    marker = f"fuzz-{n}"
    if provider == "anthropic":
        payload = {"model": "claude-sonnet-4-6", "max_tokens": 8, "stream": stream}
        payload["messages"] = [{"role": "user", "content": marker}]
        return Exchange(provider, ANTHROPIC_HOST, "/v1/messages", json.dumps(payload).encode(), stream)
    payload = {"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": marker}]}
    if stream:
        payload["stream_options"] = {"include_usage": True}  # nothing for sluice to rewrite
    return Exchange(provider, OPENAI_HOST, "/v1/chat/completions", json.dumps(payload).encode(), stream)


CREDENTIALS = {
    "anthropic": (b"x-api-key", b"sk-ant-fuzz"),
    "openai": (b"authorization", b"Bearer sk-fuzz"),
}


def assert_crossed(
    fuzzed: list[tuple[str, str]],
    sent: list[tuple[str, str]],
    received: list[tuple[str, str]],
    policy: HeaderAllowList,
    where: str,
) -> None:
    """`received` holds only headers the policy allows, and exactly the allowed ones of `fuzzed`, in order."""
    listed = connection_listed(sent)
    for name, _ in received:
        assert name.lower() == "host" or crosses(name, policy, listed), (where, name)
    names = {name.lower() for name, _ in fuzzed}
    expected = [(k, v) for k, v in sent if k.lower() in names and crosses(k, policy, listed)]
    assert [(k, v) for k, v in received if k.lower() in names] == expected, where


@pytest.fixture(scope="module")
def proxy(module_start_proxy: Callable[..., Proxy]) -> Iterator[Proxy]:
    proxy = module_start_proxy()
    yield proxy
    proxy.stop()
    assert_no_tracebacks(proxy)


def test_random_headers_both_ways_respect_the_allow_lists_and_framing(
    fake: FakeProvider, proxy: Proxy, soak: bool
) -> None:
    rng = random.Random(SEED)
    iterations = 1500 if soak else 60
    since = proxy.mark()
    for n in range(iterations):
        where = f"seed {SEED}, exchange {n}"
        exchange = random_exchange(rng, n)
        sent_request = random_headers(rng, rng.randint(1, 12))
        sent_response = random_headers(rng, rng.randint(1, 12))
        fake.clear()
        fake.next(added_headers=sent_response, text=f"answer {n}")
        credential = CREDENTIALS[exchange.provider]
        headers = [credential, (b"content-type", b"application/json")]
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in sent_request]
        conn = open_tunnel(proxy, exchange.host)
        try:
            conn.sendall(request_bytes("POST", exchange.host, exchange.path, headers, exchange.body))
            status, got, body = read_response(conn)
        finally:
            conn.close()

        # Upstream: only allowed headers arrived; every allowed fuzzed header arrived intact; body intact.
        [seen] = fake.requests
        assert seen.body == exchange.body, where
        policy = default_request_policy(provider(exchange.provider))
        assert_crossed(sent_request, sent_request, seen.headers, policy, where + ", request")
        # Client: the same for the response, and the body exactly what the fake sent.
        assert status == 200, (where, body[:300])
        assert body == seen.response.body, where
        received = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in got]
        policy = default_response_policy(provider(exchange.provider))
        assert_crossed(sent_response, seen.response.headers, received, policy, where + ", response")
        assert not proxy.tracebacks(), where

    rows = proxy.wait_for_rows(iterations, since=since, timeout=30)
    assert len(rows) == iterations
    assert all(row["status"] == 200 and row["error"] is None for row in rows)
