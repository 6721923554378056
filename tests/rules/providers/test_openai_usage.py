"""Reading OpenAI's answers: Chat Completions and Responses usage and streams (providers/openai/usage.py)."""

from __future__ import annotations

from typing import Any

import pytest

from rules.providers.openai.usage import read_openai_chat_usage, read_openai_responses_usage
from rules.usage import Usage
from tests.rules.answers import read_stream, sse

# --- OpenAI Chat Completions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param(
            {
                "prompt_tokens": 1000,
                "completion_tokens": 300,
                "total_tokens": 1300,
                "prompt_tokens_details": {"cached_tokens": 768, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 256},
            },
            Usage(input_tokens=232, cache_read_tokens=768, output_tokens=300, reasoning_tokens=256),
            id="cached and reasoning",
        ),
        pytest.param(
            {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
            Usage(input_tokens=20, output_tokens=5),
            id="no details",
        ),
        pytest.param(
            {"prompt_tokens": 20, "prompt_tokens_details": {"cached_tokens": 64}},
            Usage(input_tokens=0, cache_read_tokens=64),
            id="cached over prompt clamps at zero",
        ),
        pytest.param(
            {
                "prompt_tokens": False,
                "completion_tokens": "5",
                "prompt_tokens_details": {"cached_tokens": None},
            },
            Usage(suspect="prompt_tokens=False; completion_tokens='5'"),
            id="nonsense values are not counted but noted as suspect",
        ),
    ],
)
def test_read_openai_chat_usage(usage: dict[str, object], expected: Usage) -> None:
    assert read_openai_chat_usage(usage) == expected


def chunk(content: str | None = None, finish: str | None = None, **extra: Any) -> tuple[None, dict[str, Any]]:
    delta = {} if content is None else {"content": content}
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": None,
    }
    return (None, body | extra)


DONE = (None, "[DONE]")
USAGE = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}


def test_chat_role_only_chunk_is_not_output() -> None:
    stream = sse(
        (None, {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}), chunk("Hi")
    )
    records = [r + b"\n\n" for r in stream.split(b"\n\n") if r]
    assert read_stream("chat", *records)[1] == [False, True]


@pytest.mark.parametrize(
    "late_chunk",
    [
        pytest.param(
            '{"choices":[{"index":0,"delta":{},"finish_reason": "length"}],"usage": null}', id="spaced"
        ),
        pytest.param('{"choices":[{"index":0,"delta":{},"finish_reason" :\t "length"}]}', id="tab"),
    ],
)
def test_chat_finish_reason_found_however_it_is_spaced(late_chunk: str) -> None:
    stream = sse(chunk(""), chunk("a"), chunk("b"), chunk("c"), (None, late_chunk), DONE)
    assert read_stream("chat", stream)[0].stop_reason == "length"


def test_chat_usage_found_however_it_is_spaced() -> None:
    usage_chunk = '{"id":"chatcmpl-1","choices": [], "usage" : {"prompt_tokens": 10, "completion_tokens": 4}}'
    stream = sse(chunk(""), chunk("a"), chunk("b"), chunk("c", finish="stop"), (None, usage_chunk), DONE)
    reading, _ = read_stream("chat", stream)
    assert reading.usage == Usage(input_tokens=10, output_tokens=4)
    assert reading.stop_reason == "stop"


def test_chat_content_that_mentions_usage_is_not_usage() -> None:
    stream = sse(chunk("a"), chunk("b"), chunk('"usage":{"prompt_tokens":1} "error":"x"'), DONE)
    reading, _ = read_stream("chat", stream)
    assert reading.usage == Usage()
    assert not reading.usage_seen
    assert reading.error is None


def test_chat_azure_empty_first_chunk_does_not_hide_model() -> None:
    filters = {"id": "", "model": "", "object": "", "created": 0, "choices": [], "prompt_filter_results": []}
    reading, _ = read_stream(
        "chat", sse((None, filters), chunk("Hi"), chunk(finish="stop", usage=USAGE), DONE)
    )
    assert (reading.model, reading.response_id) == ("gpt-4o", "chatcmpl-1")


def test_chat_error_null_is_no_error() -> None:
    reading, _ = read_stream("chat", sse(chunk("a", error=None), DONE))
    assert reading.error is None


@pytest.mark.parametrize(
    ("record", "error"),
    [
        pytest.param(
            (None, {"error": {"message": "Too many tokens", "type": None, "code": "rate_limit_exceeded"}}),
            "rate_limit_exceeded: Too many tokens",
            id="code when type is null",
        ),
        pytest.param(
            ("error", {"message": "gateway timeout", "code": 504}),
            "504: gateway timeout",
            id="event named error",
        ),
        pytest.param(("error", "not json"), "in-stream error: not json", id="event named error, raw"),
    ],
)
def test_chat_stream_errors(record: tuple[str | None, Any], error: str) -> None:
    reading, _ = read_stream("chat", sse(chunk("a"), chunk("b"), chunk("c"), record))
    assert reading.error == error
    assert not reading.complete


# --- OpenAI Responses --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param(
            {
                "input_tokens": 5000,
                "input_tokens_details": {"cached_tokens": 4096},
                "output_tokens": 700,
                "output_tokens_details": {"reasoning_tokens": 600},
                "total_tokens": 5700,
            },
            Usage(input_tokens=904, cache_read_tokens=4096, output_tokens=700, reasoning_tokens=600),
            id="cached and reasoning",
        ),
        pytest.param(
            {"input_tokens": 7, "output_tokens": 2}, Usage(input_tokens=7, output_tokens=2), id="bare"
        ),
        pytest.param(
            {"input_tokens": "7", "output_tokens": True},
            Usage(suspect="input_tokens='7'; output_tokens=True"),
            id="nonsense values are not counted but noted as suspect",
        ),
        pytest.param(
            {"input_tokens": 7, "output_tokens": 1e30},
            Usage(input_tokens=7, suspect="output_tokens=1e+30"),
            id="a float count is suspect",
        ),
    ],
)
def test_read_openai_responses_usage(usage: dict[str, object], expected: Usage) -> None:
    assert read_openai_responses_usage(usage) == expected


def test_responses_failed_without_error_object() -> None:
    failed = {"type": "response.failed", "response": {"id": "resp_1", "status": "failed", "error": None}}
    reading, _ = read_stream("responses", sse(("response.failed", failed)))
    assert reading.error == "response failed without an error object"
    assert reading.complete


def test_responses_nested_error_event() -> None:
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad input"}}
    reading, _ = read_stream("responses", sse(("error", error)))
    assert reading.error == "invalid_request_error: bad input"


def test_responses_every_delta_kind_counts_as_output() -> None:
    delta = {"type": "response.function_call_arguments.delta", "delta": "{"}
    _, firsts = read_stream("responses", sse(("response.function_call_arguments.delta", delta)))
    assert firsts == [True]
