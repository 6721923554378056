"""Faults on the client side: odd and huge request bodies, non-JSON bodies both ways, clients hanging up.

Bodies go upstream byte for byte whatever they contain (sluice's request rules fail open); the client gets
the upstream's own answer; every call the upstream saw gets its row; the log has no traceback.
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from tests.e2e.harness import Proxy, anthropic_client
from tests.fake_provider import FakeProvider, Usage
from tests.faults.support import (
    ANTHROPIC_HOST,
    MESSAGE,
    curl_post,
    is_error_envelope,
    new_rows,
    open_tunnel,
    read_response,
    read_until,
    request_bytes,
)

pytestmark = pytest.mark.e2e

USAGE = Usage(input_tokens=512, cache_read_tokens=64, output_tokens=12)
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
CHAT_URL = "https://api.openai.com/v1/chat/completions"
TWENTY_MB = 20 * 1024 * 1024


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def still_serving(proxy: Proxy, fake: FakeProvider) -> None:
    fake.next(usage=USAGE)
    with anthropic_client(proxy) as client:
        assert client.messages.create(**MESSAGE).usage.output_tokens == USAGE.output_tokens


# Request bodies: invalid UTF-8, 20 MB, not JSON at all. The fake must receive exactly what was sent.


def _huge_json(stream: bool, size: int) -> bytes:
    prefix = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 5, "stream": stream})[:-1].encode()
    text_prefix = b', "messages": [{"role": "user", "content": "'
    suffix = b'"}]}'
    unit = "caf\u00e9 \u6f22\u5b57 \\u2028 ".encode()  # multi-byte UTF-8 and a JSON escape
    filler = unit * ((size - len(prefix) - len(text_prefix) - len(suffix)) // len(unit) + 1)
    return prefix + text_prefix + filler + suffix


REQUEST_BODIES: dict[str, tuple[str, bytes, int]] = {
    # name: (url, body, the fake's status for it)
    "invalid-utf8-messages": (
        ANTHROPIC_URL,
        b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user",'
        b'"content":"\xff\xfe \xc3\x28 \xed\xa0\x80"}]}',
        400,
    ),
    "invalid-utf8-chat-stream": (
        CHAT_URL,
        b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"\x80\x81\xfe\xff"}]}',
        400,
    ),
    "twenty-mb-json-stream": (ANTHROPIC_URL, _huge_json(stream=True, size=TWENTY_MB), 200),
    "twenty-mb-binary": (ANTHROPIC_URL, random.Random(8).randbytes(TWENTY_MB), 400),
    "plain-text": (ANTHROPIC_URL, b"please answer in haiku", 400),
    "form-encoded": (CHAT_URL, b"model=gpt-4o-mini&messages=hi&stream=true", 400),
    "json-array": (CHAT_URL, b'[{"model":"gpt-4o-mini"}]', 400),
    "json-string": (ANTHROPIC_URL, b'"just a string"', 400),
    "truncated-json": (ANTHROPIC_URL, b'{"model":"claude-sonnet-4-6","messages":[{"role":', 400),
    "nul-bytes": (CHAT_URL, b'{"model":"gpt-4o-mini"\x00\x00}', 400),
    "empty": (ANTHROPIC_URL, b"", 200),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REQUEST_BODIES))
def test_request_body_reaches_the_upstream_byte_for_byte(
    fake: FakeProvider, proxy: Proxy, since: int, case: str
) -> None:
    url, body, status = REQUEST_BODIES[case]
    fake.next(usage=USAGE)
    result = curl_post(proxy, url, body, "-N", timeout=60)

    [seen] = fake.requests
    assert len(seen.body) == len(body)
    assert digest(seen.body) == digest(body)  # identical bytes, whatever they were
    assert (result.status, result.returncode) == (status, 0), result.stderr
    assert result.body == seen.response.body  # and the upstream's own answer back
    if status >= 400:
        assert is_error_envelope("anthropic" if "anthropic" in url else "openai", result.body)
    [row] = new_rows(proxy, since)
    assert (row["status"], row["request_bytes"]) == (status, len(body))


# Response bodies that are not the provider's JSON: relayed untouched, recorded.


RESPONSE_BODIES: dict[str, tuple[int, bytes, str]] = {
    "gateway-html-502": (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>\n", "text/html"),
    "plain-text-200": (200, b"the model is thinking", "text/plain"),
    "json-array-200": (200, b'[{"type":"message"}]', "application/json"),
    "invalid-utf8-200": (200, b'{"type":"message","content":"\xff\xfe"}', "application/json"),
    "empty-200": (200, b"", "application/json"),
}


@pytest.mark.parametrize("case", list(RESPONSE_BODIES))
def test_non_json_answer_reaches_the_client_untouched(
    fake: FakeProvider, proxy: Proxy, since: int, case: str
) -> None:
    status, body, content_type = RESPONSE_BODIES[case]
    fake.next(status=status, body=body, headers=[("content-type", content_type)])
    result = curl_post(proxy, ANTHROPIC_URL, json.dumps(MESSAGE).encode())

    assert (result.status, result.returncode) == (status, 0), result.stderr
    assert result.body == body
    assert result.header("content-type") == content_type
    [row] = new_rows(proxy, since)
    assert row["status"] == status


# Clients hanging up: the row is written with what was seen, and the proxy carries on.


def _stream_request(host: str = ANTHROPIC_HOST) -> bytes:
    body = json.dumps({**MESSAGE, "stream": True}).encode()
    headers = [(b"x-api-key", b"sk-ant-faults"), (b"content-type", b"application/json")]
    return request_bytes("POST", host, "/v1/messages", headers, body)


@pytest.mark.parametrize("encoding", [None, "gzip"], ids=["identity", "gzip"])
def test_client_hanging_up_mid_stream_still_gets_its_row(
    fake: FakeProvider, proxy: Proxy, since: int, encoding: str | None
) -> None:
    # Four records (message_start, ping, content_block_start, a delta), then the provider pauses.
    fake.next(usage=USAGE, stall_after=4, stall_seconds=3, encoding=encoding)
    conn = open_tunnel(proxy)
    try:
        conn.sendall(_stream_request())
        seen = read_until(conn, b"\r\n\r\n")
        assert seen.startswith(b"HTTP/1.1 200")
        if encoding is None:
            seen += read_until(conn, b"content_block_start")
            assert b"message_start" in seen
    finally:
        conn.close()  # no close_notify, no last chunk: the client is simply gone

    [row] = new_rows(proxy, since)
    assert (row["stream"], row["status"]) == (1, 200)
    assert row["error"].startswith("connection lost")
    if encoding is None:
        assert (row["input_tokens"], row["cache_read_tokens"]) == (512, 64)  # message_start's usage
        message_start = fake.requests[0].response.body.split(b"\n\n")[0].split(b"data: ", 1)[1]
        assert row["response_id"] == json.loads(message_start)["message"]["id"]
    still_serving(proxy, fake)


def test_client_hanging_up_before_the_answer_still_gets_its_row(
    fake: FakeProvider, proxy: Proxy, since: int
) -> None:
    # The answer comes long after the client has gone (however slowly a loaded machine gets to the hang-up);
    # the test waits only for the row.
    fake.next(usage=USAGE, delay=30)
    conn = open_tunnel(proxy)
    try:
        conn.sendall(_stream_request())
        fake.wait_for_requests(1)  # the call is upstream now
    finally:
        conn.close()

    [row] = new_rows(proxy, since)
    assert row["status"] is None
    assert row["error"].startswith("connection lost")
    still_serving(proxy, fake)


def test_client_hanging_up_mid_upload_reaches_nobody(fake: FakeProvider, proxy: Proxy, since: int) -> None:
    body = _huge_json(stream=False, size=2 * 1024 * 1024)
    headers = [(b"x-api-key", b"sk-ant-faults"), (b"content-type", b"application/json")]
    conn = open_tunnel(proxy)
    try:
        conn.sendall(request_bytes("POST", ANTHROPIC_HOST, "/v1/messages", headers, body)[: len(body) // 2])
    finally:
        conn.close()

    still_serving(proxy, fake)
    assert len(fake.requests) == 1  # only the call that proved the proxy still serves
    assert fake.requests[0].json() == MESSAGE


# Header bytes that are not UTF-8 (obs-text, RFC 9110 §5.5): legal on the wire, and must never stop recording.


def test_non_utf8_header_bytes_are_recorded_and_recording_goes_on(
    fake: FakeProvider, proxy: Proxy, since: int
) -> None:
    body = json.dumps(MESSAGE).encode()
    headers = [
        (b"x-api-key", b"sk-ant-faults"),
        (b"content-type", b"application/json"),
        (b"x-claude-code-session-id", b"session-\xb4\xff-1"),  # sluice records this header as session_id
    ]
    fake.next(usage=USAGE)
    # An upstream request id with the same kind of bytes (recorded as request_id).
    fake.next(usage=USAGE, headers=[("request-id", "req_\xe9\xff")])
    for n in range(2):
        conn = open_tunnel(proxy)
        try:
            conn.sendall(request_bytes("POST", ANTHROPIC_HOST, "/v1/messages", headers[: 3 - n], body))
            status, _, _ = read_response(conn)
        finally:
            conn.close()
        assert status == 200
    with anthropic_client(proxy) as client:  # and ordinary calls after them
        fake.next(usage=USAGE, times=3)
        for _ in range(3):
            client.messages.create(**MESSAGE)

    found = proxy.wait_for_rows(5, since=since)
    assert len(found) == 5
    assert all(row["status"] == 200 and row["input_tokens"] == USAGE.input_tokens for row in found)
    assert found[0]["session_id"].startswith("session-")
    assert found[1]["request_id"].startswith("req_")
