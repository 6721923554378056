"""Faults on the upstream side, through a real mitmdump running sluice, driven by the provider SDKs and curl.

Every fault must end one way or the other, never in a hang: the client gets the upstream's own answer (byte
for byte, cut where the upstream cut it) or a clear error in the provider's envelope. Each call still gets
exactly one row saying what happened, and the proxy's log never shows a Python traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.harness import CurlResult, Proxy, _http_module, anthropic_client, free_port, openai_client
from tests.fake_provider import FakeProvider, Usage
from tests.faults.support import (
    CHAT,
    CLAUDE_MODEL,
    MESSAGE,
    MITMPROXY_ERROR_PAGE,
    assert_no_tracebacks,
    curl_post,
    is_error_envelope,
    new_rows,
)

pytestmark = pytest.mark.e2e

USAGE = Usage(input_tokens=321, cache_read_tokens=45, output_tokens=17)
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
CHAT_URL = "https://api.openai.com/v1/chat/completions"
RESPONSES_URL = "https://api.openai.com/v1/responses"

_http = _http_module(anthropic)
# What a cut connection looks like to the SDKs: a transport error (raw from a stream being read, or
# wrapped as APIConnectionError). A timeout is a hang, never an acceptable ending.
CUT = (_http.TransportError, anthropic.APIConnectionError, openai.APIConnectionError)
HANG = (_http.TimeoutException, anthropic.APITimeoutError, openai.APITimeoutError)


# The three metered streaming APIs, each read to the end by its own SDK.


def stream_messages(proxy: Proxy) -> list[str]:
    with anthropic_client(proxy) as client, client.messages.stream(**MESSAGE) as stream:
        return [event.type for event in stream]


def stream_chat(proxy: Proxy) -> list[str]:
    with openai_client(proxy) as client:
        return [chunk.object for chunk in client.chat.completions.create(**CHAT, stream=True)]


def stream_responses(proxy: Proxy) -> list[str]:
    with openai_client(proxy) as client:
        return [event.type for event in client.responses.create(model="gpt-5", input="hi", stream=True)]


STREAMS: dict[str, Callable[[Proxy], list[str]]] = {
    "messages": stream_messages,
    "chat": stream_chat,
    "responses": stream_responses,
}


def ending(call: Callable[[], Any]) -> tuple[str, Any]:
    """How a client call ended: ("answer", result), ("status", APIStatusError), ("cut", error) or
    ("stream-error", error) for an error the SDK raised from what the stream said. A hang fails the test."""
    try:
        return "answer", call()
    except HANG as e:
        pytest.fail(f"the client hung until its timeout: {e!r}")
    except (anthropic.APIStatusError, openai.APIStatusError) as e:
        return "status", e
    except CUT as e:
        return "cut", e
    except (anthropic.APIError, openai.APIError, ValueError) as e:
        return "stream-error", e


# Upstream closes (FIN or RST) in the middle of a stream.


@pytest.mark.parametrize("api", list(STREAMS))
@pytest.mark.parametrize("fault", ["truncate_after", "reset_after"])
def test_upstream_closing_mid_stream_cuts_the_client_and_is_recorded(
    fake: FakeProvider, proxy: Proxy, since: int, api: str, fault: str
) -> None:
    fake.next(usage=USAGE, text="one two three four five", **{fault: 3})
    how, error = ending(lambda: STREAMS[api](proxy))

    # The upstream's own answer: the stream stops where the upstream stopped, as a cut, not a clean end.
    assert how == "cut", (how, error)
    [seen] = fake.requests
    assert seen.response.outcome == ("truncated" if fault == "truncate_after" else "reset")
    [row] = new_rows(proxy, since)
    assert (row["stream"], row["status"]) == (1, 200)
    assert row["error"].startswith("connection lost")
    assert row["response_id"]  # what arrived before the cut is kept
    assert row["request_id"] == (seen.response.header("request-id") or seen.response.header("x-request-id"))


# Upstream fails before the client has seen a byte of the response: the proxy must answer for it.


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize(
    "fault",
    [
        {"reset_before_response": True},  # RST after reading the request: no status line at all
        {"split": True, "truncate_after": 1},  # headers and half the JSON body, then FIN
    ],
    ids=["reset-before-response", "cut-mid-body"],
)
def test_upstream_failing_before_the_answer_gets_a_provider_error_envelope(
    fake: FakeProvider, proxy: Proxy, since: int, provider: str, fault: dict[str, Any]
) -> None:
    fake.next(**fault)
    if provider == "anthropic":
        with anthropic_client(proxy) as client:
            how, error = ending(lambda: client.messages.create(**MESSAGE))
    else:
        with openai_client(proxy) as client:
            how, error = ending(lambda: client.chat.completions.create(**CHAT))

    # Nothing of the upstream's answer reached the client, so the proxy answers: a 5xx the SDK retries,
    # in the provider's error envelope, never mitmproxy's HTML error page.
    assert how == "status", (how, error)
    assert error.status_code in (502, 504)
    body = error.response.content
    assert not body.lstrip().lower().startswith(MITMPROXY_ERROR_PAGE), body[:200]
    assert is_error_envelope(provider, body), body[:300]
    [row] = new_rows(proxy, since)
    assert row["error"].startswith("connection lost")


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_the_envelope_reaches_http1_and_http2_clients_alike(
    fake: FakeProvider, proxy: Proxy, since: int, version: str
) -> None:
    fake.next(reset_before_response=True)
    result = _curl_post(proxy, ANTHROPIC_URL, json.dumps(MESSAGE).encode(), version)

    assert result.returncode == 0, result.stderr
    assert result.status == 502
    assert is_error_envelope("anthropic", result.body), result.body[:300]
    assert dict(result.headers)["x-should-retry"] == "true"
    [row] = new_rows(proxy, since)
    assert row["error"].startswith("connection lost")


# Upstream goes silent: the idle timeout (1 s here) ends the stream with an error event.


@pytest.mark.parametrize("api", list(STREAMS))
@pytest.mark.parametrize("stall_after", [0, 3], ids=["before-first-record", "mid-stream"])
def test_silent_upstream_gets_the_client_an_error_event_and_a_row(
    fake: FakeProvider, proxy: Proxy, since: int, api: str, stall_after: int
) -> None:
    fake.next(usage=USAGE, stall_after=stall_after, stall_seconds=4)
    how, error = ending(lambda: STREAMS[api](proxy))

    assert how in ("status", "stream-error"), (how, error)
    assert "sent nothing for 1s" in str(error)
    [row] = new_rows(proxy, since)
    assert (row["stream"], row["status"]) == (1, 200)
    assert "sent nothing for 1s" in row["error"]
    assert "idle timeout after 1s" in row["rules_applied"]


def test_slow_non_streamed_answer_is_not_cut_by_the_idle_timeout(
    fake: FakeProvider, proxy: Proxy, since: int
) -> None:
    fake.next(usage=USAGE, delay=2.5)  # longer than idle_timeout_s before the status line
    with anthropic_client(proxy) as client:
        message = client.messages.create(**MESSAGE)

    assert message.usage.input_tokens == USAGE.input_tokens
    [row] = new_rows(proxy, since)
    assert (row["status"], row["error"], row["input_tokens"]) == (200, None, USAGE.input_tokens)


# Truncated and malformed SSE: relayed byte for byte, recorded as incomplete.


def _sse(event: str | None, data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()


_MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_01TRUNC",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE_MODEL,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 77, "output_tokens": 1},
    },
}
_CHAT_CHUNK = {
    "id": "chatcmpl-TRUNC",
    "object": "chat.completion.chunk",
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "delta": {"content": "half"}, "finish_reason": None}],
}
_RESPONSE_CREATED = {
    "type": "response.created",
    "sequence_number": 0,
    "response": {"id": "resp_TRUNC", "status": "in_progress", "model": "gpt-5"},
}
# api: (url, request, a body whose HTTP framing ends cleanly before the terminal frame, that frame's name).
# Each ends with a record cut in the middle.
TRUNCATED_STREAMS = {
    "messages": (
        ANTHROPIC_URL,
        {**MESSAGE, "stream": True},
        _sse("message_start", _MESSAGE_START) + b'event: content_block_start\ndata: {"type":"content_bl',
        "message_stop",
    ),
    "chat": (
        CHAT_URL,
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        _sse(None, _CHAT_CHUNK) + b'data: {"id":"chatcmpl-TRUNC","obj',
        "[DONE]",
    ),
    "responses": (
        RESPONSES_URL,
        {"model": "gpt-5", "input": "hi", "stream": True},
        _sse("response.created", _RESPONSE_CREATED) + b"event: response.in_progress\ndata: {",
        "response.completed",
    ),
}


def _curl_post(proxy: Proxy, url: str, body: bytes, *args: str) -> CurlResult:
    return curl_post(proxy, url, body, "-N", *args)


@pytest.mark.parametrize("api", list(TRUNCATED_STREAMS))
def test_stream_ending_before_its_terminal_frame_is_relayed_and_recorded(
    fake: FakeProvider, proxy: Proxy, since: int, api: str
) -> None:
    url, request, body, terminal = TRUNCATED_STREAMS[api]
    fake.next(body=body, headers=[("content-type", "text/event-stream; charset=utf-8")])
    result = _curl_post(proxy, url, json.dumps(request).encode())

    assert (result.status, result.returncode) == (200, 0), result.stderr
    assert result.body == body  # the upstream's own answer, byte for byte
    [row] = new_rows(proxy, since)
    assert (row["stream"], row["status"]) == (1, 200)
    assert row["error"] == f"stream ended before {terminal}"
    assert row["response_id"] and "TRUNC" in row["response_id"]


@pytest.mark.parametrize("api", list(STREAMS))
def test_malformed_sse_reaches_the_client_untouched_and_is_recorded(
    fake: FakeProvider, proxy: Proxy, since: int, api: str
) -> None:
    fake.next(usage=USAGE, malformed=True, times=2)  # the third record's JSON is cut in half
    how, error = ending(lambda: STREAMS[api](proxy))
    url, request, _, _ = TRUNCATED_STREAMS[api]
    result = _curl_post(proxy, url, json.dumps(request).encode())

    assert how in ("stream-error", "answer"), (how, error)  # the SDK's own verdict on the bad record
    first, second = fake.requests
    assert (result.status, result.returncode) == (200, 0)
    assert result.body == second.response.body  # relayed as the upstream sent it
    rows = new_rows(proxy, since, 2)
    assert all((row["stream"], row["status"]) == (1, 200) for row in rows)
    assert {row["request_id"] for row in rows} == {
        r.response.header("request-id") or r.response.header("x-request-id") for r in (first, second)
    }


# Compressed responses: passed through in the provider's encoding, decoded by the client, metered.


# The SDKs' HTTP client asks for gzip and br (zstd only with an optional extra): a provider answers in what
# the client asked for, so zstd goes to curl, which asks for all three.
@pytest.mark.parametrize("encoding", ["gzip", "br"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_compressed_responses_reach_the_sdks_and_are_metered(
    fake: FakeProvider, proxy: Proxy, since: int, encoding: str, stream: bool
) -> None:
    fake.next(usage=USAGE, encoding=encoding, split=True, text="squeezed words arrive intact")
    fake.next(usage=USAGE, encoding=encoding, text="squeezed words arrive intact")
    with anthropic_client(proxy) as claude, openai_client(proxy) as gpt:
        if stream:
            with claude.messages.stream(**MESSAGE) as events:
                claude_text = events.get_final_text()
            # Asking for usage itself keeps the client's Accept-Encoding: sluice asks for identity when it
            # must cut the usage chunk it added back out.
            chunks = gpt.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})
            gpt_text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        else:
            claude_text = claude.messages.create(**MESSAGE).content[0].text
            gpt_text = gpt.chat.completions.create(**CHAT).choices[0].message.content

    assert claude_text == gpt_text == "squeezed words arrive intact"
    assert all(encoding in (r.header("accept-encoding") or "") for r in fake.requests)
    assert [r.response.header("content-encoding") for r in fake.requests] == [encoding, encoding]
    rows = new_rows(proxy, since, 2)
    for row in rows:
        assert (row["stream"], row["status"], row["error"]) == (int(stream), 200, None)
        assert row["input_tokens"] == USAGE.input_tokens
        assert row["output_tokens"] == USAGE.output_tokens


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_compressed_responses_reach_curl_byte_for_byte(
    fake: FakeProvider, proxy: Proxy, since: int, encoding: str, stream: bool
) -> None:
    fake.next(usage=USAGE, encoding=encoding, split=True)
    request = json.dumps({**MESSAGE, "stream": stream}).encode()
    result = _curl_post(proxy, ANTHROPIC_URL, request, "--compressed")

    [seen] = fake.requests
    assert (result.status, result.returncode) == (200, 0), result.stderr
    assert result.header("content-encoding") == encoding
    assert result.body == seen.response.body  # curl decoded it: the fake's body, exactly
    [row] = new_rows(proxy, since)
    assert (row["stream"], row["error"], row["output_tokens"]) == (int(stream), None, USAGE.output_tokens)


# 429 and 529 with retry hints: passed through unmodified; the SDK's own retry works through the proxy.


RETRY_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry", "request-id", "x-request-id")


@pytest.mark.parametrize(
    ("url", "request_body", "status"),
    [(ANTHROPIC_URL, MESSAGE, 429), (ANTHROPIC_URL, MESSAGE, 529), (CHAT_URL, CHAT, 429)],
    ids=["anthropic-429", "anthropic-529", "openai-429"],
)
def test_rate_limited_and_overloaded_answers_pass_through_unmodified(
    fake: FakeProvider, proxy: Proxy, since: int, url: str, request_body: dict[str, Any], status: int
) -> None:
    fake.next(status=status, headers=[("retry-after", "7"), ("retry-after-ms", "7000")])
    result = _curl_post(proxy, url, json.dumps(request_body).encode())

    [seen] = fake.requests
    assert result.status == status
    assert result.body == seen.response.body
    sent = {k.lower(): v for k, v in seen.response.headers}
    got = {k.lower(): v for k, v in result.headers}
    for name in [*RETRY_HEADERS, *(k for k in sent if "ratelimit" in k)]:
        assert got.get(name) == sent.get(name), name
    assert got["retry-after"] == "7"
    [row] = new_rows(proxy, since)
    assert row["status"] == status


@pytest.mark.parametrize("status", [429, 529])
def test_sdk_retries_on_retry_after_through_the_proxy(
    fake: FakeProvider, proxy: Proxy, since: int, status: int
) -> None:
    fake.next(status=status, headers=[("retry-after-ms", "20")])
    fake.next(usage=USAGE)
    with anthropic_client(proxy, max_retries=2) as client:
        message = client.messages.create(**MESSAGE)

    assert message.usage.output_tokens == USAGE.output_tokens
    rejected, answered = fake.requests
    assert rejected.response.status == status and answered.response.status == 200
    rows = new_rows(proxy, since, 2)
    assert sorted(row["status"] for row in rows) == [200, status]


# Upstream unreachable (nothing listens): the proxy answers for it at once, never a hang or a crash.


@pytest.mark.parametrize("mode", [None, "reverse:https://api.anthropic.com"], ids=["regular", "reverse"])
def test_unreachable_upstream_gets_a_provider_error_envelope_and_a_row(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], mode: str | None
) -> None:
    nowhere = f"api.anthropic.com=127.0.0.1:{free_port()}"
    proxy = start_proxy(mode=mode, env={"SLUICE_TEST_HOSTS": f"{fake.hosts_env()},{nowhere}"})
    with anthropic_client(proxy) as client:
        how, error = ending(lambda: client.messages.create(**MESSAGE))

    # sluice connects upstream when the request is ready (connection_strategy=lazy), so the failure
    # belongs to a request it can answer: a 502 the SDK retries, in Anthropic's envelope.
    assert how == "status", (how, error)
    assert error.status_code == 502
    assert is_error_envelope("anthropic", error.response.content), error.response.content[:300]
    assert error.response.headers["x-should-retry"] == "true"
    calls = 1
    if not proxy.reverse:  # in reverse mode the client speaks plain HTTP/1.1 to the proxy
        over_http2 = _curl_post(proxy, ANTHROPIC_URL, json.dumps(MESSAGE).encode(), "--http2")
        assert (over_http2.status, over_http2.returncode) == (502, 0), over_http2.stderr
        assert is_error_envelope("anthropic", over_http2.body), over_http2.body[:300]
        calls += 1
    assert fake.requests == []
    rows = new_rows(proxy, 0, calls)
    for row in rows:
        assert row["status"] is None  # no upstream answer; what the client got is the envelope
        assert row["error"].startswith("upstream unreachable: "), row["error"]
    proxy.stop()
    assert_no_tracebacks(proxy)


def test_an_explicit_eager_connection_strategy_is_respected(
    fake: FakeProvider, start_proxy: Callable[..., Proxy]
) -> None:
    nowhere = f"api.anthropic.com=127.0.0.1:{free_port()}"
    proxy = start_proxy(
        extra_args=["--set", "connection_strategy=eager"],
        env={"SLUICE_TEST_HOSTS": f"{fake.hosts_env()},{nowhere}"},
    )
    with anthropic_client(proxy) as client:
        how, error = ending(lambda: client.messages.create(**MESSAGE))

    # Eagerly, mitmproxy connects as the client opens its tunnel: the failure is the tunnel's, before any
    # request exists (README, "Failing upstreams"). Still prompt, and still no crash.
    assert how == "cut", (how, error)
    assert fake.requests == []
    proxy.stop()  # drains the writer: a row, had there been one, is in the database now
    assert proxy.rows() == []
    assert_no_tracebacks(proxy)
