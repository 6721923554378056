"""The echo scrub (addons/echo.py): the real credential never comes back to the client in an answer."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import pytest

from addons.credentials import Credentials
from addons.echo import NOTE, EchoScrub
from addons.gate import Gate
from rules.secrets import fingerprint
from tests.addons.proxy import REAL_KEY, answer, configured, llm_flow

ECHO = {
    "type": "error",
    "error": {"type": "authentication_error", "message": f"invalid x-api-key: {REAL_KEY}"},
}
SCRUBBED = f"[credential {fingerprint(REAL_KEY)}]"


def parts(core):  # type: ignore[no-untyped-def]
    credentials = Credentials(core)
    return [Gate(core), EchoScrub(core, credentials), credentials]


@pytest.fixture
def proxy(tmp_path: Path):  # type: ignore[no-untyped-def]
    with configured(tmp_path, parts) as proxy:
        yield proxy


def test_a_credential_echoed_in_an_error_body_is_replaced_by_its_fingerprint_and_noted(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow()
    asyncio.run(proxy.call(flow, answer(401, ECHO)))
    assert flow.response is not None
    body = json.loads(flow.response.content or b"")
    assert body["error"]["message"] == f"invalid x-api-key: {SCRUBBED}"
    assert int(flow.response.headers["content-length"]) == len(flow.response.raw_content or b"")
    assert proxy.record(flow).notes == [NOTE]


def test_a_compressed_error_body_is_searched_too(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow()
    reply = answer(400, ECHO, [("content-encoding", "gzip")])  # encoded as the header says
    assert REAL_KEY.encode() in gzip.decompress(reply.raw_content or b"")
    asyncio.run(proxy.call(flow, reply))
    assert flow.response is not None
    assert REAL_KEY.encode() not in gzip.decompress(flow.response.raw_content or b"")
    assert SCRUBBED in (flow.response.text or "")


def test_a_credential_echoed_in_a_header_is_scrubbed(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow()
    asyncio.run(proxy.call(flow, answer(200, {"type": "message"}, [("x-debug-key", REAL_KEY)])))
    assert flow.response is not None and flow.response.headers["x-debug-key"] == SCRUBBED
    assert proxy.record(flow).notes == [NOTE]


def test_an_answer_without_the_credential_is_passed_byte_for_byte(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow()
    reply = answer(400, b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}')
    asyncio.run(proxy.call(flow, reply))
    assert flow.response is not None and flow.response.raw_content == reply.raw_content
    assert proxy.record(flow).notes == []


def test_a_flow_that_went_without_a_swapped_credential_is_not_searched(proxy) -> None:  # type: ignore[no-untyped-def]
    flow = llm_flow(host="llm.example.org")  # no credential is swapped for it
    reply = answer(400, ECHO)
    asyncio.run(proxy.call(flow, reply))
    assert flow.response is not None and flow.response.raw_content == reply.raw_content
