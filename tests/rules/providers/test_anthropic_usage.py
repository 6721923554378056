"""Reading Anthropic's answers: usage objects and Messages streams (rules/providers/anthropic/usage.py)."""

from __future__ import annotations

from typing import Any

import pytest

from rules.providers.anthropic.usage import read_anthropic_usage
from rules.usage import Usage
from tests.rules.answers import read_stream, sse

# --- Anthropic ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param(
            {
                "input_tokens": 12,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": 4000,
                "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
                "output_tokens": 50,
                "output_tokens_details": {"thinking_tokens": 20},
                "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 1},
                "service_tier": "priority",
                "speed": "fast",
                "inference_geo": "eu",
                "brand_new_counter": 99,
            },
            Usage(12, 4000, 100, 200, 50, 20, 3, "priority", "fast"),
            id="everything",
        ),
        pytest.param(
            {"input_tokens": 5, "cache_creation_input_tokens": 700, "output_tokens": 9},
            Usage(input_tokens=5, cache_write_5m_tokens=700, output_tokens=9),
            id="no breakdown: all 5m",
        ),
        pytest.param(
            {"cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 64}},
            Usage(cache_write_5m_tokens=0, cache_write_1h_tokens=64),
            id="breakdown without total",
        ),
        pytest.param(
            {"cache_creation_input_tokens": 64, "cache_creation": {"ephemeral_1h_input_tokens": 64}},
            Usage(cache_write_5m_tokens=0, cache_write_1h_tokens=64),
            id="1h only in breakdown",
        ),
        pytest.param(
            {
                "input_tokens": True,
                "output_tokens": "12",
                "cache_read_input_tokens": -1,
                "cache_creation_input_tokens": 1.5,
                "cache_creation": "lots",
                "server_tool_use": {"web_search_requests": None},
                "service_tier": 1,
                "speed": "",
            },
            Usage(
                suspect="input_tokens=True; cache_read_input_tokens=-1; cache_creation_input_tokens=1.5; "
                "output_tokens='12'"
            ),
            id="nonsense values are not counted but noted as suspect",
        ),
        pytest.param(
            {"input_tokens": 10, "output_tokens": 10**30},
            Usage(input_tokens=10, suspect=f"output_tokens={10**30}"),
            id="an absurd count is suspect",
        ),
        pytest.param(
            {"input_tokens": 10, "output_tokens": 10**9},
            Usage(input_tokens=10, output_tokens=10**9),
            id="up to a billion tokens is believed",
        ),
        pytest.param({}, Usage(), id="empty"),
    ],
)
def test_read_anthropic_usage(usage: dict[str, object], expected: Usage) -> None:
    assert read_anthropic_usage(usage) == expected


def message_start(usage: dict[str, object]) -> tuple[str, dict[str, object]]:
    message = {"id": "msg_1", "type": "message", "model": "claude-x", "content": [], "usage": usage}
    return ("message_start", {"type": "message_start", "message": message})


def message_delta(usage: dict[str, object], stop: str | None = None) -> tuple[str, dict[str, object]]:
    return ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": usage})


STOP = ("message_stop", {"type": "message_stop"})


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param(
            [message_start({"input_tokens": 10, "output_tokens": 1}), message_delta({"output_tokens": 40})],
            Usage(input_tokens=10, output_tokens=40),
            id="placeholder output replaced",
        ),
        pytest.param(
            [
                message_start({"input_tokens": 10, "output_tokens": 1}),
                message_delta({"output_tokens": 40}),
                message_delta({"output_tokens": 95}),
            ],
            Usage(input_tokens=10, output_tokens=95),
            id="cumulative deltas overwrite, never add",
        ),
        pytest.param(
            [
                message_start(
                    {
                        "input_tokens": 10,
                        "cache_creation_input_tokens": 300,
                        "cache_creation": {
                            "ephemeral_5m_input_tokens": 100,
                            "ephemeral_1h_input_tokens": 200,
                        },
                        "output_tokens": 1,
                    }
                ),
                message_delta({"input_tokens": 10, "cache_creation_input_tokens": 300, "output_tokens": 7}),
            ],
            Usage(input_tokens=10, cache_write_5m_tokens=100, cache_write_1h_tokens=200, output_tokens=7),
            id="delta total without breakdown keeps the 1h split",
        ),
        pytest.param(
            [
                message_start(
                    {
                        "cache_creation_input_tokens": 300,
                        "cache_creation": {
                            "ephemeral_5m_input_tokens": 100,
                            "ephemeral_1h_input_tokens": 200,
                        },
                    }
                ),
                message_delta({"cache_creation_input_tokens": 450}),
            ],
            Usage(cache_write_5m_tokens=250, cache_write_1h_tokens=200),
            id="a grown total is the newest word",
        ),
        pytest.param(
            [
                message_start({"input_tokens": 10, "service_tier": "standard", "output_tokens": 1}),
                message_delta({"output_tokens": 5, "server_tool_use": {"web_search_requests": 2}}),
            ],
            Usage(input_tokens=10, output_tokens=5, web_search_requests=2, service_tier="standard"),
            id="fields only in message_start survive",
        ),
        pytest.param(
            [
                message_start({"input_tokens": 10, "output_tokens": 1}),
                message_delta({"input_tokens": None, "output_tokens": -3}),
            ],
            Usage(input_tokens=10, suspect="output_tokens=-3"),
            id="null does not overwrite; negative is suspect and replaces the count",
        ),
        pytest.param(
            [
                message_start({"input_tokens": 10, "output_tokens": 1.5}),
                message_delta({"output_tokens": 5}),
            ],
            Usage(input_tokens=10, output_tokens=5),
            id="a valid later count clears what was suspect",
        ),
    ],
)
def test_anthropic_stream_usage_is_cumulative(records: list[tuple[str, Any]], expected: Usage) -> None:
    reading, _ = read_stream("messages", sse(*records, STOP))
    assert reading.usage == expected
    assert reading.usage_seen
    assert reading.complete
    assert reading.error is None


def test_anthropic_stop_reason_from_message_delta() -> None:
    reading, _ = read_stream("messages", sse(message_start({}), message_delta({}, stop="max_tokens"), STOP))
    assert reading.stop_reason == "max_tokens"


def test_anthropic_error_event_without_json() -> None:
    reading, _ = read_stream("messages", sse(message_start({}), ("error", "upstream exploded")))
    assert reading.error == "in-stream error: upstream exploded"
    assert not reading.complete


def test_anthropic_first_error_wins() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    later = {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}
    reading, _ = read_stream("messages", sse(message_start({}), ("error", error), ("error", later)))
    assert reading.error == "overloaded_error: Overloaded"


def test_anthropic_only_the_first_delta_marks_output() -> None:
    delta = ("content_block_delta", {"type": "content_block_delta", "delta": {"text": "x"}})
    stream = sse(message_start({}), ("ping", {"type": "ping"}), delta, delta, delta, STOP)
    records = [r + b"\n\n" for r in stream.split(b"\n\n") if r]
    _, firsts = read_stream("messages", *records)
    assert firsts == [False, False, True, False, False, False]
