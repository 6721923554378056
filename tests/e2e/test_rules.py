"""Request rules end to end (issue #4): what the operator's rules do to real clients' requests, checked in
what the fake provider RECEIVED, what the client got back, and the `rules_applied` of the call's row.

One mitmdump serves the module (rules are stateless): alice has a `user_id` and a client-scoped system
block; bob has neither, so a request from bob that names no scoped model, carries `max_tokens` and has at
most 4 cache breakpoints is one no rule applies to.
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import CurlResult, Proxy, anthropic_client, curl, openai_client
from tests.fake_provider import DEFAULT_TEXT, FakeProvider, Usage

pytestmark = pytest.mark.e2e

ALICE_KEY = "sluice-client-alice-rules-71c3"
BOB_KEY = "sluice-client-bob-rules-0e9a"
ENV = {"SLUICE_E2E_ALICE": ALICE_KEY, "SLUICE_E2E_BOB": BOB_KEY}

POLICY = "Operator policy: never paste customer data into answers."
OPUS_NOTE = "Operator note for Opus models: keep answers short."
CACHED_TEXT = "Operator context worth caching across turns."

PLAIN_MODEL = "claude-sonnet-4-6"  # no model-scoped block applies
OPUS_MODEL = "claude-opus-4-1"  # gets the opus-note block
CACHED_MODEL = "claude-haiku-4-5"  # gets the cached block

CONFIG = f"""
[[clients]]
name = "alice"
key = "env:SLUICE_E2E_ALICE"
user_id = "alice-42"

[[clients]]
name = "bob"
key = "env:SLUICE_E2E_BOB"

[[upstreams]]
host = "gateway.sluice.test"
provider = "anthropic"

[rules]
cache_control_max = 4
max_tokens_default = 2048
model_aliases = {{ "claude-fast" = "{PLAIN_MODEL}" }}

[rules.request_headers]
allow = ["x-team-*"]

[[rules.system_blocks]]
name = "policy"
text = "{POLICY}"
clients = ["alice"]

[[rules.system_blocks]]
name = "opus-note"
text = "{OPUS_NOTE}"
models = ["claude-opus-*"]

[[rules.system_blocks]]
name = "cached"
text = "{CACHED_TEXT}"
cache = "5m"
models = ["{CACHED_MODEL}"]
"""

MESSAGES_URL = "https://api.anthropic.com/v1/messages"
GATEWAY_URL = "https://gateway.sluice.test/v1/messages"
BILLING_BLOCK = {
    "type": "text",
    "text": "x-anthropic-billing-header: cc_version=2.0.14.a1b; cc_entrypoint=cli; cch=00000;",
}
CLAUDE_CODE_PROMPT = {
    "type": "text",
    "text": "You are Claude Code, Anthropic's official CLI for Claude.",
    "cache_control": {"type": "ephemeral"},
}
CLAUDE_CODE_USER_ID = json.dumps({"device_id": "d3v1c3", "account_uuid": "", "session_id": "5e55-10n"})
EPHEMERAL = {"type": "ephemeral"}


@pytest.fixture(scope="module")
def proxy(module_start_proxy: ProxyFactory) -> Proxy:
    return module_start_proxy(config_toml=CONFIG, env=ENV)


# Helpers.


def post(
    proxy: Proxy,
    body: bytes | dict[str, Any],
    *headers: str,
    key: str | None = BOB_KEY,
    url: str = MESSAGES_URL,
) -> CurlResult:
    """curl a JSON body (exact bytes when given bytes) with `headers` ("name: value") and a client key."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    args = ["-H", "content-type: application/json"]
    if key is not None:
        args += ["-H", f"x-api-key: {key}"]
    for header in headers:
        args += ["-H", header]
    with tempfile.TemporaryDirectory(prefix="sluice-body-") as scratch:
        path = Path(scratch) / "body"
        path.write_bytes(raw)
        return curl(proxy, url, *args, "--data-binary", f"@{path}")


def applied(row: dict[str, Any]) -> list[str]:
    """The body edits in the row's `rules_applied`: without the header allow-list's entries (checked on
    their own) and without notes (`note:...`, such as a client hanging up right after the last event)."""
    entries = json.loads(row["rules_applied"] or "[]")
    skip = ("request_headers_dropped:", "response_headers_dropped:", "note:")
    return [e for e in entries if not e.startswith(skip)]


def one_call(proxy: Proxy, since: int) -> dict[str, Any]:
    [row] = proxy.wait_for_rows(1, since=since)
    return row


def message(model: str = PLAIN_MODEL, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 64}
    body.update(fields)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return body


def breakpoints(body: dict[str, Any]) -> list[tuple[str, ...]]:
    """Where the cache_control markers of a Messages body are, in prompt order (tools, system, messages)."""
    found: list[tuple[str, ...]] = []
    for index, tool in enumerate(body.get("tools", [])):
        if "cache_control" in tool:
            found.append(("tools", str(index)))
    system = body.get("system")
    for index, block in enumerate(system if isinstance(system, list) else []):
        if "cache_control" in block:
            found.append(("system", str(index)))
    for m, turn in enumerate(body.get("messages", [])):
        content = turn.get("content")
        for c, block in enumerate(content if isinstance(content, list) else []):
            if "cache_control" in block:
                found.append(("messages", str(m), str(c)))
    return found


def without_markers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_markers(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [without_markers(v) for v in value]
    return value


def texts(system: Any) -> list[str]:
    return [block["text"] for block in system]


def cached_conversation(markers: int, model: str = PLAIN_MODEL) -> dict[str, Any]:
    """A body with `markers` (2..5) cache breakpoints: the tool, the system prompt, then user turns."""
    turns = []
    for n in range(markers - 2):
        if turns:
            turns.append({"role": "assistant", "content": [{"type": "text", "text": f"answer {n}"}]})
        turns.append(
            {
                "role": "user",
                "content": [{"type": "text", "text": f"question {n}", "cache_control": EPHEMERAL}],
            }
        )
    return message(
        model,
        tools=[
            {
                "name": "lookup",
                "description": "Look a thing up.",
                "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
                "cache_control": EPHEMERAL,
            }
        ],
        system=[{"type": "text", "text": "Base system prompt.", "cache_control": EPHEMERAL}],
        messages=turns,
        metadata={"user_id": "already-set"},
    )


# System blocks.


def test_system_block_goes_after_claude_codes_billing_block_and_every_turn_is_byte_identical(
    fake: FakeProvider, proxy: Proxy
) -> None:
    since = proxy.mark()
    sent: list[bytes] = []
    hooks = {"request": [lambda request: sent.append(request.content)]}
    request = message(system=[BILLING_BLOCK, CLAUDE_CODE_PROMPT], metadata={"user_id": CLAUDE_CODE_USER_ID})
    with anthropic_client(proxy, ALICE_KEY, httpx_kwargs={"event_hooks": hooks}) as client:
        for _ in range(2):
            assert client.messages.create(**request).content[0].text == DEFAULT_TEXT

    first, second = fake.requests
    assert first.body == second.body  # the prompt cache and thinking blocks depend on the exact prefix
    received, original = first.json(), json.loads(sent[0])
    assert received["system"] == [BILLING_BLOCK, CLAUDE_CODE_PROMPT, {"type": "text", "text": POLICY}]
    assert list(received) == list(original)  # key order kept
    assert {k: v for k, v in received.items() if k != "system"} == {
        k: v for k, v in original.items() if k != "system"
    }
    rows = proxy.wait_for_rows(2, since=since)
    assert [applied(row) for row in rows] == [["system_block:policy"]] * 2


def test_a_string_system_becomes_an_array_only_when_a_block_is_injected(
    fake: FakeProvider, proxy: Proxy
) -> None:
    body = json.dumps(message(system="You are terse.", metadata={"user_id": "u-1"})).encode()
    since = proxy.mark()
    assert post(proxy, body, key=ALICE_KEY).status == 200
    assert post(proxy, body, key=BOB_KEY).status == 200

    for_alice, for_bob = fake.requests
    assert for_alice.json()["system"] == [
        {"type": "text", "text": "You are terse."},
        {"type": "text", "text": POLICY},
    ]
    assert for_bob.body == body  # nothing injected: the string stays, the bytes stay
    alice_row, bob_row = proxy.wait_for_rows(2, since=since)
    assert applied(alice_row) == ["system_block:policy"]
    assert applied(bob_row) == []


def test_a_block_already_present_is_not_added_again(fake: FakeProvider, proxy: Proxy) -> None:
    body = json.dumps(
        message(
            system=[{"type": "text", "text": "Base."}, {"type": "text", "text": POLICY}],
            metadata={"user_id": "u-1"},
        )
    ).encode()
    since = proxy.mark()
    assert post(proxy, body, key=ALICE_KEY).status == 200

    assert fake.requests[0].body == body
    assert applied(one_call(proxy, since)) == []


@pytest.mark.parametrize(
    ("key", "model", "blocks"),
    [
        (BOB_KEY, PLAIN_MODEL, []),
        (BOB_KEY, OPUS_MODEL, [("opus-note", OPUS_NOTE)]),
        (ALICE_KEY, PLAIN_MODEL, [("policy", POLICY)]),
        (ALICE_KEY, OPUS_MODEL, [("policy", POLICY), ("opus-note", OPUS_NOTE)]),
    ],
    ids=["bob-sonnet", "bob-opus", "alice-sonnet", "alice-opus"],
)
def test_system_blocks_are_scoped_by_client_and_model(
    fake: FakeProvider, proxy: Proxy, key: str, model: str, blocks: list[tuple[str, str]]
) -> None:
    body = message(model, system=[{"type": "text", "text": "Base."}], metadata={"user_id": "u-1"})
    since = proxy.mark()
    assert post(proxy, body, key=key).status == 200

    assert texts(fake.requests[0].json()["system"]) == ["Base.", *(text for _, text in blocks)]
    assert applied(one_call(proxy, since)) == [f"system_block:{name}" for name, _ in blocks]


def test_openai_chat_gets_a_system_message_and_responses_get_instructions(
    fake: FakeProvider, proxy: Proxy
) -> None:
    since = proxy.mark()
    with openai_client(proxy, ALICE_KEY) as client:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "hi"}],
        )
        client.responses.create(model="gpt-5", input="hi", instructions="Be brief.")
        client.responses.create(model="gpt-5", input="hi")

    chat, with_instructions, without = (r.json() for r in fake.requests)
    assert chat["messages"] == [
        {"role": "system", "content": "You are helpful."},
        {"role": "system", "content": POLICY},
        {"role": "user", "content": "hi"},
    ]
    assert with_instructions["instructions"] == f"Be brief.\n\n{POLICY}"
    assert without["instructions"] == POLICY
    assert {chat["safety_identifier"], with_instructions["safety_identifier"]} == {"alice-42"}
    rows = proxy.wait_for_rows(3, since=since)
    assert [applied(row) for row in rows] == [["system_block:policy", "user_id"]] * 3


# user_id.


def test_user_id_is_stamped_when_absent_and_never_overwritten(fake: FakeProvider, proxy: Proxy) -> None:
    since = proxy.mark()
    system = [{"type": "text", "text": POLICY}]  # already there: only the user id is in question
    with anthropic_client(proxy, ALICE_KEY) as claude, openai_client(proxy, ALICE_KEY) as gpt:
        claude.messages.create(**message(system=system))
        claude.messages.create(**message(system=system, metadata={"user_id": CLAUDE_CODE_USER_ID}))
        gpt.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": POLICY}, {"role": "user", "content": "hi"}],
            safety_identifier="the-clients-own-id",
        )

    stamped, kept, openai_kept = (r.json() for r in fake.requests)
    assert stamped["metadata"] == {"user_id": "alice-42"}
    assert kept["metadata"] == {"user_id": CLAUDE_CODE_USER_ID}
    assert openai_kept["safety_identifier"] == "the-clients-own-id"
    rows = proxy.wait_for_rows(3, since=since)
    assert [applied(row) for row in rows] == [["user_id"], [], []]


# cache_control.


def test_five_cache_breakpoints_arrive_as_four_keeping_the_last(fake: FakeProvider, proxy: Proxy) -> None:
    body = cached_conversation(5)
    assert len(breakpoints(body)) == 5
    since = proxy.mark()
    assert post(proxy, body).status == 200

    received = fake.requests[0].json()
    marks = breakpoints(received)
    assert len(marks) == 4
    assert marks[-1] == breakpoints(body)[-1]  # the longest prefix stays cached
    assert set(marks) < set(breakpoints(body))
    assert without_markers(received) == without_markers(body)  # only a marker went, never content
    assert applied(one_call(proxy, since)) == ["cache_control_cap:5->4"]


def test_four_cache_breakpoints_arrive_byte_identical(fake: FakeProvider, proxy: Proxy) -> None:
    body = json.dumps(cached_conversation(4), indent=1).encode()  # formatting a re-serialization would lose
    since = proxy.mark()
    assert post(proxy, body).status == 200

    assert fake.requests[0].body == body
    assert applied(one_call(proxy, since)) == []


def test_a_1h_breakpoint_after_a_5m_one_is_fixed(fake: FakeProvider, proxy: Proxy) -> None:
    body = message(
        system=[{"type": "text", "text": "Base.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
                ],
            }
        ],
    )
    since = proxy.mark()
    assert post(proxy, body).status == 200

    received = fake.requests[0].json()
    assert received["system"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert received["messages"] == body["messages"]
    assert applied(one_call(proxy, since)) == ["cache_ttl_order"]


def test_an_injected_block_with_cache_counts_toward_the_cap(fake: FakeProvider, proxy: Proxy) -> None:
    since = proxy.mark()
    assert post(proxy, cached_conversation(2, CACHED_MODEL)).status == 200
    assert post(proxy, cached_conversation(4, CACHED_MODEL)).status == 200

    roomy, full = (r.json() for r in fake.requests)
    # Under the cap, the operator's block carries its cache marker...
    assert roomy["system"][-1] == {"type": "text", "text": CACHED_TEXT, "cache_control": EPHEMERAL}
    assert len(breakpoints(roomy)) == 3
    # ...and counts: 4 of the client's + 1 of sluice's = 5, capped to 4, the last one kept.
    assert texts(full["system"])[-1] == CACHED_TEXT
    sent = cached_conversation(4, CACHED_MODEL)
    assert len(breakpoints(full)) == 4
    assert breakpoints(full)[-1] == breakpoints(sent)[-1]
    roomy_row, full_row = proxy.wait_for_rows(2, since=since)
    assert applied(roomy_row) == ["system_block:cached"]
    assert applied(full_row) == ["system_block:cached", "cache_control_cap:5->4"]


# max_tokens, model aliases.


def test_max_tokens_is_backfilled_only_when_absent(fake: FakeProvider, proxy: Proxy) -> None:
    without = {"model": PLAIN_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    since = proxy.mark()
    assert post(proxy, without).status == 200
    assert post(proxy, {**without, "max_tokens": 64}).status == 200

    backfilled, kept = (r.json() for r in fake.requests)
    assert backfilled == {**without, "max_tokens": 2048}
    assert kept["max_tokens"] == 64
    first, second = proxy.wait_for_rows(2, since=since)
    assert (applied(first), applied(second)) == (["max_tokens"], [])


def test_a_model_alias_is_rewritten_and_the_row_names_the_responses_model(
    fake: FakeProvider, proxy: Proxy
) -> None:
    fake.next(model=f"{PLAIN_MODEL}-20260101")
    since = proxy.mark()
    with anthropic_client(proxy, BOB_KEY) as client:
        answer = client.messages.create(**message("claude-fast"))

    assert fake.requests[0].json()["model"] == PLAIN_MODEL
    assert answer.model == f"{PLAIN_MODEL}-20260101"
    row = one_call(proxy, since)
    assert row["model"] == f"{PLAIN_MODEL}-20260101"
    assert applied(row) == [f"model_alias:claude-fast->{PLAIN_MODEL}"]


# Claude Code's billing block.


def test_the_billing_block_is_stripped_for_a_gateway_and_kept_for_anthropic(
    fake: FakeProvider, proxy: Proxy
) -> None:
    request = message(system=[BILLING_BLOCK, CLAUDE_CODE_PROMPT])
    since = proxy.mark()
    with (
        anthropic_client(proxy, BOB_KEY, base_url="https://gateway.sluice.test") as gateway,
        anthropic_client(proxy, BOB_KEY) as anthropic_api,
    ):
        gateway.messages.create(**request)
        anthropic_api.messages.create(**request)

    to_gateway, to_anthropic = fake.requests
    assert to_gateway.header("host") == "gateway.sluice.test"
    assert to_gateway.json()["system"] == [CLAUDE_CODE_PROMPT]
    assert to_anthropic.header("host") == "api.anthropic.com"
    assert to_anthropic.json()["system"] == [BILLING_BLOCK, CLAUDE_CODE_PROMPT]
    gateway_row, anthropic_row = proxy.wait_for_rows(2, since=since)
    assert applied(gateway_row) == ["billing_block"]
    assert applied(anthropic_row) == []


# OpenAI stream usage.


def test_chat_stream_usage_is_asked_for_but_the_usage_chunk_never_reaches_a_client_that_did_not(
    fake: FakeProvider, proxy: Proxy
) -> None:
    fake.next(text="one two three", usage=Usage(input_tokens=40, cache_read_tokens=60, output_tokens=5))
    since = proxy.mark()
    with openai_client(proxy, BOB_KEY) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )

    assert fake.requests[0].json()["stream_options"] == {"include_usage": True}
    assert fake.requests[0].response.body.count(b'"choices":[]') == 1  # the fake did send it
    assert all(chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two three"
    row = one_call(proxy, since)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (40, 60, 5)
    assert applied(row) == ["stream_usage"]


def test_chat_stream_usage_reaches_a_client_that_asked_for_it(fake: FakeProvider, proxy: Proxy) -> None:
    sent: list[bytes] = []
    hooks = {"request": [lambda request: sent.append(request.content)]}
    since = proxy.mark()
    with openai_client(proxy, BOB_KEY, httpx_kwargs={"event_hooks": hooks}) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )

    assert fake.requests[0].body == sent[0]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
    assert applied(one_call(proxy, since)) == []


# Header allow-lists, both ways.


def test_request_headers_outside_the_allow_list_never_reach_the_provider(
    fake: FakeProvider, proxy: Proxy
) -> None:
    passed = [
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "prompt-caching-2024-07-31,interleaved-thinking-2025-05-14"),
        ("anthropic-beta", "context-1m-2025-08-07"),
        ("x-stainless-lang", "python"),
        ("x-stainless-retry-count", "0"),
        ("x-claude-code-session-id", "5e55-10n-1d"),
        ("x-team-id", "team-blue"),  # allowed by the operator's [rules.request_headers]
    ]
    dropped = [
        ("x-internal-secret", "do-not-forward"),
        ("cookie", "session=abc"),
        ("forwarded", "for=10.0.0.7"),
        ("x-forwarded-for", "10.0.0.7"),
        ("via", "1.1 corp-proxy"),
        ("x-real-ip", "10.0.0.7"),
        ("proxy-authorization", "Basic dXNlcjpwYXNz"),
    ]
    since = proxy.mark()
    result = post(proxy, message(), *(f"{name}: {value}" for name, value in passed + dropped))

    assert result.status == 200
    assert json.loads(result.body)["content"][0]["text"] == DEFAULT_TEXT
    [seen] = fake.requests
    for name in {name for name, _ in passed}:
        assert seen.header_values(name) == [v for n, v in passed if n == name], name
    for name, _ in dropped:
        assert seen.header(name) is None, name
    row = one_call(proxy, since)
    assert row["session_id"] == "5e55-10n-1d"
    [note] = [e for e in json.loads(row["rules_applied"]) if e.startswith("request_headers_dropped:")]
    assert set(note.split(":", 1)[1].lower().split(",")) >= {name for name, _ in dropped}


def test_the_sdks_own_headers_pass_verbatim(fake: FakeProvider, proxy: Proxy) -> None:
    sent: list[Any] = []
    hooks = {"request": [lambda request: sent.append(request.headers)]}
    extra = {"anthropic-beta": "interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"}
    with anthropic_client(proxy, BOB_KEY, httpx_kwargs={"event_hooks": hooks}) as client:
        client.messages.create(**message(), extra_headers=extra)

    [seen] = fake.requests
    families = [n for n in sent[0] if n.lower().startswith(("anthropic-", "x-stainless-"))]
    assert "anthropic-version" in families and "anthropic-beta" in families
    assert any(n.startswith("x-stainless-") for n in families)
    for name in families:
        assert seen.header(name) == sent[0][name], name


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_response_headers_outside_the_allow_list_never_reach_the_client(
    fake: FakeProvider, proxy: Proxy, provider: str
) -> None:
    fake.next(
        headers=[
            ("Set-Cookie", "__cf_bm=tracking; path=/; HttpOnly"),
            ("X-Foo", "bar"),
            ("retry-after", "7"),
            ("retry-after-ms", "7000"),
            ("x-should-retry", "false"),
        ]
    )
    if provider == "anthropic":
        result = post(proxy, message())
    else:
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        result = post(proxy, chat, url="https://api.openai.com/v1/chat/completions")

    assert result.status == 200
    upstream = fake.requests[0].response
    assert upstream is not None and upstream.header("set-cookie") and upstream.header("x-foo")
    assert result.header("set-cookie") is None
    assert result.header("x-foo") is None
    limits = [(k.lower(), v) for k, v in upstream.headers if "ratelimit" in k.lower()]
    assert len(limits) >= 6
    for name, value in limits:
        assert result.header(name) == value, name
    assert (result.header("retry-after"), result.header("retry-after-ms")) == ("7", "7000")
    assert result.header("x-should-retry") == "false"
    request_id = "request-id" if provider == "anthropic" else "x-request-id"
    assert result.header(request_id) == upstream.header(request_id)


@pytest.mark.parametrize("key", [BOB_KEY, ALICE_KEY], ids=["untouched", "rewritten"])
def test_a_chunked_upload_still_arrives_whole(fake: FakeProvider, proxy: Proxy, key: str) -> None:
    # curl speaks HTTP/2 to the proxy and drops the chunked header (HTTP/2 frames the body itself), so the
    # body reaches sluice with no length at all; the HTTP/1.1 upstream must still get it framed.
    body = json.dumps(message(system="Base.", metadata={"user_id": "u-1"})).encode()
    result = post(proxy, body, "Transfer-Encoding: chunked", key=key)

    assert result.status == 200
    assert json.loads(result.body)["content"][0]["text"] == DEFAULT_TEXT
    [seen] = fake.requests
    if key == BOB_KEY:
        assert seen.body == body
    else:
        assert seen.json()["system"] == [{"type": "text", "text": "Base."}, {"type": "text", "text": POLICY}]


# Fidelity: what sluice cannot or need not change goes out exactly as it came.


def test_a_body_no_rule_applies_to_is_forwarded_byte_for_byte(fake: FakeProvider, proxy: Proxy) -> None:
    body = (
        b'{ "max_tokens" : 64,\n  "model":"claude-sonnet-4-6", "temperature": 0.10, "top_k": 1e2,\n'
        b'  "messages": [{"role": "user", "content": "caf\\u00e9 \xe2\x98\x95 12345678901234567890123"}] }'
    )
    since = proxy.mark()
    assert post(proxy, body).status == 200

    assert fake.requests[0].body == body
    entries = json.loads(one_call(proxy, since)["rules_applied"] or "[]")
    assert [e for e in entries if not e.startswith("response_headers_dropped:")] == []


@pytest.mark.parametrize(
    ("raw", "headers", "why"),
    [
        (b'{"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [', (), "body is not JSON"),
        (
            gzip.compress(json.dumps(message()).encode()),
            ("Content-Encoding: gzip",),
            "body is compressed (gzip)",
        ),
    ],
    ids=["malformed-json", "gzip"],
)
def test_a_body_sluice_cannot_read_is_forwarded_untouched_and_the_row_says_why(
    fake: FakeProvider, proxy: Proxy, raw: bytes, headers: tuple[str, ...], why: str
) -> None:
    since = proxy.mark()
    post(proxy, raw, *headers, key=ALICE_KEY)  # alice: user id and policy would apply to a readable body

    [seen] = fake.requests
    assert seen.body == raw
    for header in headers:
        name, _, value = header.partition(": ")
        assert seen.header(name) == value
    entries = json.loads(one_call(proxy, since)["rules_applied"])
    assert f"note:{why}" in entries
    assert not [e for e in entries if e.startswith(("system_block", "user_id"))]


# Every edit is visible.


def test_the_row_lists_every_edit_applied(fake: FakeProvider, proxy: Proxy) -> None:
    body = cached_conversation(5)
    del body["metadata"]
    since = proxy.mark()
    assert post(proxy, body, key=ALICE_KEY).status == 200

    received = fake.requests[0].json()
    assert received["metadata"] == {"user_id": "alice-42"}
    assert texts(received["system"])[-1] == POLICY
    assert len(breakpoints(received)) == 4
    assert applied(one_call(proxy, since)) == ["system_block:policy", "user_id", "cache_control_cap:5->4"]


# What sluice changed travels with saved flows (`-w`), for the contentview to show later.


def test_flows_saved_with_w_carry_what_sluice_changed(start_proxy: ProxyFactory, tmp_path: Path) -> None:
    from mitmproxy import io

    saved = tmp_path / "flows.mitm"
    proxy = start_proxy(config_toml=CONFIG, env=ENV, extra_args=["-w", str(saved)])
    assert post(proxy, message(system=[{"type": "text", "text": "Base."}]), key=ALICE_KEY).status == 200
    proxy.wait_for_rows(1)
    proxy.stop()

    with saved.open("rb") as file:
        [flow] = list(io.FlowReader(file).stream())
    assert " · in " in flow.comment and " · out " in flow.comment  # the summary, as it left: see addons/meter
    sluice = flow.metadata["sluice"]
    assert "system_block:policy" in sluice["rules"]
    assert {"op": "added", "path": "system[1]"}.items() <= sluice["changes"][0].items()


def test_mitmdump_printing_bodies_shows_what_sluice_changed_and_the_cache_verdict(
    start_proxy: ProxyFactory,
) -> None:
    proxy = start_proxy(config_toml=CONFIG, env=ENV, extra_args=["--set", "flow_detail=3"])
    assert post(proxy, message(system=[{"type": "text", "text": "Base."}]), key=ALICE_KEY).status == 200
    proxy.wait_for_rows(1)
    proxy.stop()

    printed = proxy.log_text()
    assert "sluice changed this request: system_block:policy" in printed  # the request, in the LLM view
    assert "sluice changed nothing in this request" not in printed
    assert re.search(r"cache +(written|not used|hit)", printed)  # the response's verdict, printed as it left
