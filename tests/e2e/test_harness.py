"""The harness is honest: a bare mitmdump (no sluice) relays real clients to the fake, unchanged.

If these fail, no other end-to-end result means anything.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from typing import Any

import anthropic
import brotli
import openai
import pytest
import zstandard

from tests.e2e.harness import (
    ADDON_SCRIPT,
    SITECUSTOMIZE_DIR,
    CertAuthority,
    Proxy,
    anthropic_client,
    async_anthropic_client,
    async_openai_client,
    curl,
    openai_client,
    rows,
    wait_for_rows,
)
from tests.fake_provider import DEFAULT_TEXT, FakeProvider, Usage

pytestmark = pytest.mark.e2e

MODEL = "claude-opus-4-1"
MESSAGE: dict[str, Any] = {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def events(payload: bytes) -> list[tuple[str | None, str]]:
    """SSE records of a whole body as (event, data) pairs."""
    found = []
    for record in payload.decode().split("\n\n"):
        if not record.strip():
            continue
        fields = dict(line.split(": ", 1) for line in record.splitlines())
        found.append((fields.get("event"), fields["data"]))
    return found


# The proxy relays real clients, and the fake sees what they sent.


def test_anthropic_sdk_reaches_the_fake_under_the_real_host(fake: FakeProvider, bare_proxy: Proxy) -> None:
    sent = []
    hooks = {"request": [lambda request: sent.append(request)]}
    with anthropic_client(bare_proxy, httpx_kwargs={"event_hooks": hooks}) as client:
        message = client.messages.create(**MESSAGE)

    [seen] = fake.requests
    assert (seen.method, seen.target) == ("POST", "/v1/messages")
    assert seen.header("host") == "api.anthropic.com"
    assert seen.sni == "api.anthropic.com"
    assert seen.body == sent[0].content
    assert seen.header("authorization") == "Bearer sk-ant-test"
    assert ("X-Stainless-Lang", "python") in seen.headers  # original case kept
    assert message.content[0].text == DEFAULT_TEXT
    assert message.model == MODEL
    assert message.id == json.loads(seen.response.body)["id"]
    assert message._request_id == seen.response.header("request-id")


def test_openai_sdk_streams_chat_and_gets_usage_only_when_asked(
    fake: FakeProvider, bare_proxy: Proxy
) -> None:
    fake.next(text="one two three", usage=Usage(input_tokens=40, cache_read_tokens=60, output_tokens=5))
    fake.next(text="one two three")
    with openai_client(bare_proxy) as client:
        asked = list(
            client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})
        )
        unasked = list(client.chat.completions.create(**CHAT, stream=True))

    assert "".join(c.choices[0].delta.content or "" for c in asked if c.choices) == "one two three"
    assert asked[-1].choices == []
    assert asked[-1].usage is not None
    assert (asked[-1].usage.prompt_tokens, asked[-1].usage.completion_tokens) == (100, 5)
    assert asked[-1].usage.prompt_tokens_details.cached_tokens == 60
    assert all(c.choices and c.usage is None for c in unasked)
    assert [r.header("host") for r in fake.requests] == ["api.openai.com", "api.openai.com"]
    assert fake.requests[0].response.body.endswith(b"data: [DONE]\n\n")


def test_openai_responses_stream_ends_with_completed_usage(fake: FakeProvider, bare_proxy: Proxy) -> None:
    fake.next(usage=Usage(input_tokens=10, cache_read_tokens=5, output_tokens=20, reasoning_tokens=12))
    with openai_client(bare_proxy) as client:
        stream = list(client.responses.create(model="gpt-5", input="hi", stream=True))

    assert stream[0].type == "response.created"
    assert stream[-1].type == "response.completed"
    usage = stream[-1].response.usage
    assert (usage.input_tokens, usage.input_tokens_details.cached_tokens) == (15, 5)
    assert (usage.output_tokens, usage.output_tokens_details.reasoning_tokens) == (20, 12)
    assert stream[-1].response.output_text == DEFAULT_TEXT
    assert [e.sequence_number for e in stream] == list(range(len(stream)))


def test_anthropic_stream_has_the_documented_event_order(fake: FakeProvider, bare_proxy: Proxy) -> None:
    usage = Usage(input_tokens=3, cache_read_tokens=100, cache_write_5m_tokens=7, cache_write_1h_tokens=11)
    fake.next(usage=usage, message_deltas=2)
    with anthropic_client(bare_proxy) as client, client.messages.stream(**MESSAGE) as stream:
        final = stream.get_final_message()

    sent = events(fake.requests[0].response.body)
    kinds = [kind for kind, _ in sent]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert kinds[-4:] == ["content_block_stop", "message_delta", "message_delta", "message_stop"]
    assert all(kind == json.loads(data)["type"] for kind, data in sent)
    assert json.loads(sent[0][1])["message"]["usage"]["output_tokens"] == 1  # placeholder
    assert [json.loads(d)["usage"]["output_tokens"] for k, d in sent if k == "message_delta"] == [4, 9]
    assert final.usage.output_tokens == 9  # cumulative: the SDK overwrites, and so must sluice
    assert final.usage.cache_creation.ephemeral_1h_input_tokens == 11
    assert final.usage.cache_creation_input_tokens == 18


async def _async_calls(proxy: Proxy) -> tuple[str, str]:
    async with async_anthropic_client(proxy) as claude, async_openai_client(proxy) as gpt:
        message = await claude.messages.create(**MESSAGE)
        chat = await gpt.chat.completions.create(**CHAT)
    return message.content[0].text, chat.choices[0].message.content or ""


def test_async_clients_work_through_the_proxy(fake: FakeProvider, bare_proxy: Proxy) -> None:
    import asyncio

    assert asyncio.run(_async_calls(bare_proxy)) == (DEFAULT_TEXT, DEFAULT_TEXT)


def test_curl_sees_the_fakes_rate_limit_headers(fake: FakeProvider, bare_proxy: Proxy) -> None:
    status, headers, body = curl(
        bare_proxy,
        "https://api.anthropic.com/v1/messages",
        "-H",
        "content-type: application/json",
        "-H",
        "x-api-key: sk-ant-curl",
        "--data-binary",
        json.dumps(MESSAGE),
    )

    assert status == 200
    [seen] = fake.requests
    assert seen.header("x-api-key") == "sk-ant-curl"
    assert json.loads(body)["content"][0]["text"] == DEFAULT_TEXT
    names = {name.lower() for name, _ in headers}
    for family in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert {f"anthropic-ratelimit-{family}-{part}" for part in ("limit", "remaining", "reset")} <= names
    assert {"anthropic-ratelimit-unified-5h-utilization", "anthropic-ratelimit-unified-7d-reset"} <= names
    assert dict((k.lower(), v) for k, v in headers)["request-id"] == seen.response.header("request-id")


def test_curl_to_openai_gets_openai_rate_limit_headers(fake: FakeProvider, bare_proxy: Proxy) -> None:
    result = curl(bare_proxy, "https://api.openai.com/v1/chat/completions", "--json", json.dumps(CHAT))

    assert result.status == 200
    assert result.header("x-ratelimit-reset-requests") == "6m0s"
    assert result.header("x-ratelimit-remaining-tokens") is not None
    assert result.header("x-request-id") == fake.requests[0].response.header("x-request-id")
    assert result.header("openai-processing-ms") is not None


def test_unknown_paths_get_404_in_the_providers_envelope(fake: FakeProvider, bare_proxy: Proxy) -> None:
    claude = curl(bare_proxy, "https://api.anthropic.com/v1/nope")
    gpt = curl(bare_proxy, "https://api.openai.com/v1/nope")

    assert (claude.status, json.loads(claude.body)["error"]["type"]) == (404, "not_found_error")
    assert (gpt.status, json.loads(gpt.body)["error"]["message"]) == (404, "Invalid URL (GET /v1/nope)")


def test_count_tokens_is_answered(fake: FakeProvider, bare_proxy: Proxy) -> None:
    fake.next(usage=Usage(input_tokens=1234))
    with anthropic_client(bare_proxy) as client:
        counted = client.messages.count_tokens(model=MODEL, messages=MESSAGE["messages"])
    assert counted.input_tokens == 1234


# Scripted behaviours reach the client.


def test_scripted_429_reaches_the_sdk_with_retry_after(fake: FakeProvider, bare_proxy: Proxy) -> None:
    fake.next(status=429)
    with anthropic_client(bare_proxy) as client, pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(**MESSAGE)

    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert caught.value.response.headers["anthropic-ratelimit-requests-remaining"]
    assert fake.pending() == 0


def test_scripted_openai_401_is_in_openais_envelope(fake: FakeProvider, bare_proxy: Proxy) -> None:
    fake.accepted_credentials = {"sk-real"}
    with (
        openai_client(bare_proxy, api_key="sk-wrong") as client,
        pytest.raises(openai.AuthenticationError) as e,
    ):
        client.chat.completions.create(**CHAT)
    assert e.value.code == "invalid_api_key"


def test_scripted_canned_body_and_headers_are_sent_verbatim(fake: FakeProvider, bare_proxy: Proxy) -> None:
    fake.next(status=418, body=b"not json at all", headers=[("X-Custom", "yes"), ("request-id", None)])
    result = curl(bare_proxy, "https://api.anthropic.com/v1/messages", "--json", "{}")
    assert (result.status, result.body) == (418, b"not json at all")
    assert result.header("x-custom") == "yes"
    assert result.header("request-id") is None


@pytest.mark.parametrize(
    ("encoding", "decode"),
    [("gzip", gzip.decompress), ("br", brotli.decompress), ("zstd", zstandard.ZstdDecompressor().decompress)],
)
def test_scripted_encoding_is_relayed_compressed(
    fake: FakeProvider, bare_proxy: Proxy, encoding, decode
) -> None:
    fake.next(encoding=encoding)
    result = curl(bare_proxy, "https://api.anthropic.com/v1/messages", "--json", json.dumps(MESSAGE))
    assert result.header("content-encoding") == encoding
    assert json.loads(decode(result.body))["content"][0]["text"] == DEFAULT_TEXT


def test_scripted_gzip_stream_decodes_in_the_sdk(fake: FakeProvider, bare_proxy: Proxy) -> None:
    fake.next(encoding="gzip", split=True)
    with anthropic_client(bare_proxy) as client, client.messages.stream(**MESSAGE) as stream:
        assert stream.get_final_text() == DEFAULT_TEXT
    assert fake.requests[0].response.header("content-encoding") == "gzip"


def test_scripted_truncated_stream_is_an_error_for_the_client(fake: FakeProvider, bare_proxy: Proxy) -> None:
    fake.next(truncate_after=4)
    # A bare mitmdump buffers the response, so the cut surfaces as its 502 rather than mid-stream.
    with (
        anthropic_client(bare_proxy) as client,
        pytest.raises(anthropic.InternalServerError) as caught,
        client.messages.stream(**MESSAGE) as stream,
    ):
        stream.get_final_message()
    assert caught.value.status_code == 502
    assert "incomplete chunked read" in caught.value.response.text
    assert fake.requests[0].response.outcome == "truncated"


def test_scripted_in_stream_error_event_reaches_the_sdk(fake: FakeProvider, bare_proxy: Proxy) -> None:
    fake.next(error_after=3)
    with (
        anthropic_client(bare_proxy) as client,
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(**MESSAGE) as stream,
    ):
        stream.get_final_message()
    assert caught.value.body["error"]["type"] == "overloaded_error"
    assert [kind for kind, _ in events(fake.requests[0].response.body)][-1] == "error"
    assert fake.requests[0].response.status == 200


def test_scripted_malformed_json_breaks_the_sdk(fake: FakeProvider, bare_proxy: Proxy) -> None:
    fake.next(malformed=True)
    with anthropic_client(bare_proxy) as client, pytest.raises(json.JSONDecodeError):
        client.messages.create(**MESSAGE)


def test_scripted_reset_before_response_is_a_502(fake: FakeProvider, bare_proxy: Proxy) -> None:
    fake.next(reset_before_response=True)
    result = curl(bare_proxy, "https://api.anthropic.com/v1/messages", "--json", json.dumps(MESSAGE))
    assert result.status == 502
    assert fake.requests[0].response.outcome == "reset"


def test_queued_behaviours_match_by_path_and_fall_back_to_the_default(
    fake: FakeProvider, bare_proxy: Proxy
) -> None:
    fake.next(path="/v1/chat/completions", status=503)
    fake.set_default(text="default answer")
    with anthropic_client(bare_proxy) as claude, openai_client(bare_proxy) as gpt:
        assert claude.messages.create(**MESSAGE).content[0].text == "default answer"
        assert fake.pending() == 1
        with pytest.raises(openai.InternalServerError):
            gpt.chat.completions.create(**CHAT)
    assert fake.pending() == 0


# The fake's transport faults, seen on the wire without a proxy in between.


def _raw_exchange(
    fake: FakeProvider, ca: CertAuthority | None, body: dict[str, Any]
) -> list[tuple[float, bytes]]:
    """POST /v1/messages over a raw socket (TLS when `ca` is given); each recv() with its arrival time."""
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reads = []
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as raw:
        conn = raw
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca.ca_cert))
            # Report a missing close_notify instead of passing it off as a clean end.
            conn = context.wrap_socket(raw, server_hostname="api.anthropic.com", suppress_ragged_eofs=False)
        conn.sendall(head + payload)
        while data := conn.recv(65536):
            reads.append((time.monotonic(), data))
    return reads


def _chunks(wire: bytes) -> list[bytes]:
    """The HTTP/1.1 chunks of a chunked response body (RFC 9112 §7.1)."""
    rest = wire.split(b"\r\n\r\n", 1)[1]
    chunks = []
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return chunks
        chunks.append(rest[:size])
        rest = rest[size + 2 :]


def test_split_sends_each_record_in_two_chunks_and_two_writes(
    fake: FakeProvider, test_ca: CertAuthority
) -> None:
    fake.next(split=True, split_delay=0.02, event_delay=0)
    started = time.monotonic()
    reads = _raw_exchange(fake, test_ca, {**MESSAGE, "stream": True})

    chunks = _chunks(b"".join(data for _, data in reads))
    records = len(events(b"".join(chunks)))
    assert len(chunks) == 2 * records
    assert not chunks[0].endswith(b"\n\n") and chunks[1].endswith(b"\n\n")
    # Every write is its own TLS record and a TLS read never spans records: one read per write at least.
    assert len(reads) >= len(chunks)
    # And the halves were apart in time, not just in framing (a lower bound: the sleeps guarantee it).
    assert reads[-1][0] - started >= records * 0.02


def test_stall_pauses_the_stream(fake: FakeProvider, test_ca: CertAuthority) -> None:
    fake.next(stall_after=2, stall_seconds=0.5, event_delay=0)
    started = time.monotonic()
    reads = _raw_exchange(fake, test_ca, {**MESSAGE, "stream": True})
    # Only a lower bound: the sleep guarantees it, however loaded the machine is.
    assert reads[-1][0] - started >= 0.5
    assert fake.requests[0].response.wait_ended()  # the client may read the end before the fake returns
    assert fake.requests[0].response.outcome == "complete"


def test_reset_is_a_tcp_reset(plain_fake: FakeProvider) -> None:
    plain_fake.next(reset_after=2)
    with pytest.raises(ConnectionResetError):
        _raw_exchange(plain_fake, None, {**MESSAGE, "stream": True})


def test_truncate_closes_before_the_terminal_frame(plain_fake: FakeProvider) -> None:
    plain_fake.next(truncate_after=3)
    wire = b"".join(data for _, data in _raw_exchange(plain_fake, None, {**MESSAGE, "stream": True}))
    assert wire.count(b"event: ") == 3
    assert b"message_stop" not in wire
    assert not wire.endswith(b"0\r\n\r\n")


def test_a_cut_tls_stream_has_no_close_notify(fake: FakeProvider, test_ca: CertAuthority) -> None:
    fake.next(truncate_after=3)
    with pytest.raises(ssl.SSLEOFError):
        _raw_exchange(fake, test_ca, {**MESSAGE, "stream": True})


def test_fake_records_chunked_request_bodies(fake: FakeProvider, test_ca: CertAuthority) -> None:
    import httpx

    def body():
        yield b'{"model": "m", '
        yield b'"messages": []}'

    with httpx.Client(verify=ssl.create_default_context(cafile=str(test_ca.ca_cert))) as client:
        response = client.post(f"{fake.base_url}/v1/messages", content=body())
    assert response.status_code == 200
    assert fake.requests[0].body == b'{"model": "m", "messages": []}'
    assert fake.requests[0].header("transfer-encoding") == "chunked"


# Name resolution in the proxy, reverse mode, the database helpers.


def test_sitecustomize_resolves_only_the_provider_hosts() -> None:
    # The asyncio path is the one mitmproxy's server connections take.
    script = (
        "import asyncio, socket\n"
        "print(socket.getaddrinfo('api.anthropic.com', 443, type=socket.SOCK_STREAM)[0][4])\n"
        "async def resolve():\n"
        "    return await asyncio.get_running_loop().getaddrinfo('API.OPENAI.COM', 443)\n"
        "print(asyncio.run(resolve())[0][4])\n"
        "print(socket.getaddrinfo('localhost', 80, socket.AF_INET)[0][4])\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(SITECUSTOMIZE_DIR),
        "SLUICE_TEST_HOSTS": "api.anthropic.com=127.0.0.1:4431, api.openai.com=127.0.0.1:4432",
    }
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["('127.0.0.1', 4431)", "('127.0.0.1', 4432)", "('127.0.0.1', 80)"]
    assert "api.anthropic.com resolves to 127.0.0.1:4431" in done.stderr


def test_reverse_mode_keeps_the_upstream_host(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(addon=False, mode="reverse:https://api.anthropic.com")
    with anthropic_client(proxy) as client:
        assert client.messages.create(**MESSAGE).content[0].text == DEFAULT_TEXT
    assert fake.requests[0].header("host") == "api.anthropic.com"
    assert fake.requests[0].sni == "api.anthropic.com"


def test_reverse_mode_to_a_plain_http_fake(plain_fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(addon=False, mode=f"reverse:http://127.0.0.1:{plain_fake.port}")
    result = curl(proxy, f"{proxy.url}/v1/chat/completions", "--json", json.dumps(CHAT))
    assert result.status == 200
    assert not plain_fake.requests[0].tls


def test_mitmweb_runs_under_the_harness_too(fake: FakeProvider, start_proxy) -> None:
    import urllib.request

    proxy = start_proxy(addon=False, program="mitmweb")
    assert curl(proxy, "https://api.openai.com/v1/chat/completions", "--json", json.dumps(CHAT)).status == 200
    with urllib.request.urlopen(f"{proxy.web_url}/flows?token={proxy.web_token}", timeout=5) as response:
        [flow] = json.load(response)
    assert (flow["request"]["host"], flow["response"]["status_code"]) == ("api.openai.com", 200)


def test_rows_reads_the_calls_table(tmp_path) -> None:
    import sqlite3

    db_path = tmp_path / "sluice.db"
    assert rows(db_path) == []
    with sqlite3.connect(db_path) as conn:
        conn.execute("create table calls (id text primary key, model text)")
        conn.executemany("insert into calls values (?, ?)", [("a", "m1"), ("b", "m2")])
    assert rows(db_path) == [{"id": "a", "model": "m1"}, {"id": "b", "model": "m2"}]
    assert wait_for_rows(db_path, 1, since=1) == [{"id": "b", "model": "m2"}]
    with pytest.raises(AssertionError, match="expected 3"):
        wait_for_rows(db_path, 3, timeout=0.1)


@pytest.mark.skipif(not ADDON_SCRIPT.exists(), reason="addons/sluice.py is not written yet")
def test_sluice_addon_records_a_call(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy()
    fake.next(usage=Usage(input_tokens=7, output_tokens=3))
    with anthropic_client(proxy) as client:
        client.messages.create(**MESSAGE)
    [row] = proxy.wait_for_rows(1)
    assert (row["host"], row["path"], row["model"]) == ("api.anthropic.com", "/v1/messages", MODEL)
    assert (row["input_tokens"], row["output_tokens"]) == (7, 3)


def test_a_stall_with_resume_lasts_until_the_test_sets_it(fake: FakeProvider, test_ca: CertAuthority) -> None:
    resume = threading.Event()
    fake.next(stall_after=2, stall_seconds=60, resume=resume, event_delay=0)
    releaser = threading.Thread(target=lambda: (_wait_for_pending(fake), resume.set()))
    releaser.start()
    reads = _raw_exchange(fake, test_ca, {**MESSAGE, "stream": True})
    releaser.join(10)
    assert fake.requests[0].response.wait_ended()
    assert fake.requests[0].response.outcome == "complete"
    assert b"message_stop" in b"".join(data for _, data in reads)


def _wait_for_pending(fake: FakeProvider) -> None:
    deadline = time.monotonic() + 10
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)
