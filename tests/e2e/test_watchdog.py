"""A stream whose upstream goes silent is ended by sluice with a proper error event, and recorded."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.harness import Proxy, anthropic_client, curl, openai_client
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e

REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.fixture(scope="module")
def proxy(module_start_proxy) -> Proxy:
    return module_start_proxy(config_toml="idle_timeout_s = 1\n")


def test_anthropic_stream_gets_an_error_event_and_a_row(fake: FakeProvider, proxy: Proxy) -> None:
    since = proxy.mark()
    fake.next(stall_after=3, stall_seconds=8)
    seen = []
    with anthropic_client(proxy) as client, pytest.raises(anthropic.APIStatusError) as ended:  # noqa: SIM117
        with client.messages.stream(**REQUEST) as stream:
            for event in stream:
                seen.append(event.type)
    assert seen[:1] == ["message_start"]
    assert "sent nothing for 1s" in str(ended.value)
    [row] = proxy.wait_for_rows(1, since=since)
    assert row["status"] == 200
    assert "sent nothing for 1s" in row["error"]
    assert row["input_tokens"] is not None  # partial usage from message_start is kept
    assert "idle timeout after 1s" in row["rules_applied"]


def test_openai_chat_stream_gets_an_error_chunk(fake: FakeProvider, proxy: Proxy) -> None:
    since = proxy.mark()
    fake.next(stall_after=2, stall_seconds=8)
    with openai_client(proxy) as client, pytest.raises(openai.APIError) as ended:
        for _ in client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            pass
    assert "sent nothing for 1s" in str(ended.value)
    [row] = proxy.wait_for_rows(1, since=since)
    assert "sent nothing for 1s" in row["error"]


def test_compressed_stream_is_cut_and_still_recorded(fake: FakeProvider, proxy: Proxy) -> None:
    since = proxy.mark()
    fake.next(stall_after=2, stall_seconds=8, encoding="gzip")
    result = curl(
        proxy,
        "https://api.anthropic.com/v1/messages",
        "-N",
        "--compressed",
        "-d",
        '{"model":"claude-sonnet-4-6",'
        '"max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}',
    )
    assert result.status == 200
    [row] = proxy.wait_for_rows(1, since=since)
    assert row["error"] and "idle timeout after 1s" in row["rules_applied"]


def test_a_slow_but_living_stream_is_left_alone(fake: FakeProvider, proxy: Proxy) -> None:
    since = proxy.mark()
    fake.next(event_delay=0.4)
    with anthropic_client(proxy) as client, client.messages.stream(**REQUEST) as stream:
        text = stream.get_final_text()
    assert text
    [row] = proxy.wait_for_rows(1, since=since)
    assert row["error"] is None


def test_reverse_mode_plain_client_gets_the_error_event(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(config_toml="idle_timeout_s = 1\n", mode="reverse:https://api.anthropic.com")
    fake.next(stall_after=3, stall_seconds=8)
    with anthropic_client(proxy) as client, pytest.raises(anthropic.APIStatusError) as ended:  # noqa: SIM117
        with client.messages.stream(**REQUEST) as stream:
            for _ in stream:
                pass
    assert "sent nothing for 1s" in str(ended.value)
    [row] = proxy.wait_for_rows(1)
    assert row["host"] == "api.anthropic.com" and "sent nothing" in row["error"]
