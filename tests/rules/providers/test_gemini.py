"""Gemini's module: its answers (recorded shapes in tests/fixtures/gemini/), its request rules, its view,
its prompt-cache shape, its estimate, its envelope."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rules.cache_health import read_prompt_shape
from rules.config import Rules, SystemBlock
from rules.estimate import UNBOUNDED_OUTPUT_TOKENS, estimate_tokens
from rules.providers import classify, provider, wire_format
from rules.providers.gemini import path_model
from rules.rewrite import RuleContext, apply_request_rules
from rules.transcript import outline_request, reassemble
from rules.usage import StreamReader, read_response_body

FIXTURES = Path(__file__).parents[2] / "fixtures" / "gemini"
WIRE = wire_format("generate_content")


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash"),
        ("/v1/models/gemini-2.5-pro:streamGenerateContent?alt=sse", "gemini-2.5-pro"),
        ("/v1beta/models/gemini-2.5-flash", None),
        ("/v1beta/tunedModels/x:generateContent", None),
    ],
)
def test_the_model_is_read_from_the_path(path: str, model: str | None) -> None:
    assert path_model(path) == model


def test_both_methods_are_gemini_and_the_openai_compatible_path_is_chat() -> None:
    for method in ("generateContent", "streamGenerateContent"):
        found = classify("POST", f"/v1beta/models/gemini-2.5-flash:{method}?alt=sse")
        assert found is not None and found.wire is WIRE
    chat = classify("POST", "/v1beta/openai/chat/completions")
    assert chat is not None and chat.api == "chat"


def test_a_whole_answer_maps_onto_the_columns_the_other_providers_fill() -> None:
    answer = fixture("generate_content_thinking_cached.json")
    expect = answer["expect"]
    reading = read_response_body(WIRE, json.dumps(answer["body"]).encode(), 200)
    usage = reading.usage
    assert reading.model == expect["model"] and reading.complete and reading.error is None
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens, usage.reasoning_tokens) == (
        expect["input_tokens"],
        expect["cache_read_tokens"],
        expect["output_tokens"],
        expect["reasoning_tokens"],
    )


def test_a_stream_is_read_from_its_last_chunk_and_its_first_output_is_timed() -> None:
    expect = fixture("stream_thinking_cached.json")["expect"]
    body = (FIXTURES / "stream_thinking_cached.sse").read_bytes()
    reader = StreamReader(WIRE)
    firsts = [reader.feed(body[i : i + 97]) for i in range(0, len(body), 97)]
    reading = reader.finish()
    assert firsts.count(True) == 1
    assert reading.complete and reading.error is None and reading.model == expect["model"]
    usage = reading.usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens) == (91, 2048, 349)


def test_a_stream_cut_before_its_finish_reason_says_so() -> None:
    body = (FIXTURES / "stream_thinking_cached.sse").read_bytes()
    reader = StreamReader(WIRE)
    reader.feed(body.split(b"\r\n\r\n")[0] + b"\r\n\r\n")
    reading = reader.finish()
    assert not reading.complete and reading.error == "stream ended before a chunk with a finishReason"
    assert reading.usage.cache_read_tokens == 2048  # what was seen is kept


def test_an_error_record_in_a_stream_is_the_calls_error() -> None:
    reader = StreamReader(WIRE)
    reader.feed(b'data: {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}\n\n')
    assert reader.finish().error == "UNAVAILABLE: overloaded"


def test_system_blocks_go_into_the_instruction_once_in_the_clients_spelling() -> None:
    rules = Rules(system_blocks=[SystemBlock(name="house", text="Be brief.")])
    context = RuleContext(wire=WIRE, host="generativelanguage.googleapis.com", rules=rules)
    raw = b'{"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "system_instruction": {"parts": []}}'
    result = apply_request_rules(raw, context)
    assert result.body is not None and result.applied == ["system_block:house"]
    sent = json.loads(result.body)
    assert (
        sent["system_instruction"] == {"parts": [{"text": "Be brief."}]} and "systemInstruction" not in sent
    )
    assert apply_request_rules(result.body, context).body is None  # applied twice is applied once


def test_the_view_shows_thoughts_text_and_the_prompt() -> None:
    body = (FIXTURES / "stream_thinking_cached.sse").read_bytes()
    kinds = [part.kind for part in reassemble(WIRE, body).parts]
    assert kinds == ["thinking", "text"]  # pieces of one kind are joined
    outline = outline_request(
        WIRE,
        {
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "tools": [{"functionDeclarations": [{"name": "lookup"}]}],
            "generationConfig": {"maxOutputTokens": 64},
        },
    )
    assert [entry.path for entry in outline.system] == ["systemInstruction.parts[0]"]
    assert [(entry.path, entry.role) for entry in outline.messages] == [("contents[0].parts[0]", "user")]
    assert [entry.name for entry in outline.tools] == ["lookup"]
    assert outline.settings == (("generationConfig", '{"maxOutputTokens":64}'),)


def test_the_prompt_cache_shape_is_the_whole_prompt_in_order() -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "yo"}]},
        ],
    }
    shape = read_prompt_shape(WIRE, body)
    assert shape is not None and not shape.marked
    assert shape.labels == ("systemInstruction", "contents[0]", "contents[1]") and shape.cacheable == 3
    longer = read_prompt_shape(WIRE, {**body, "contents": [*body["contents"], {"role": "user", "parts": []}]})
    assert longer is not None and longer.chain.startswith(shape.chain)


@pytest.mark.parametrize(
    ("config", "output"),
    [
        ({"generationConfig": {"maxOutputTokens": 64}}, 64),
        ({"generation_config": {"max_output_tokens": 64, "candidate_count": 3}}, 192),
        ({"generationConfig": {"maxOutputTokens": "64"}}, UNBOUNDED_OUTPUT_TOKENS),
        ({}, UNBOUNDED_OUTPUT_TOKENS),
    ],
)
def test_the_estimate_reads_the_nested_ceiling_in_either_spelling(
    config: dict[str, Any], output: int
) -> None:
    assert estimate_tokens(WIRE, config, 400) == (100, output)


def test_sluices_own_answers_are_in_googles_envelope() -> None:
    gemini = provider("gemini")
    assert json.loads(gemini.error_body(429, "slow down", None)) == {
        "error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}
    }
    assert gemini.sse_error_event(504, "idle") == (
        b'data: {"error":{"code":504,"message":"idle","status":"DEADLINE_EXCEEDED"}}\n\n'
    )
    changes = gemini.write_credential({}, "real", "key")
    assert changes == {b"x-goog-api-key": b"real", b"authorization": None, b"x-api-key": None}
