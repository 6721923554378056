"""The request rules (addons/rewrite.py), judged by the request as it leaves the hook."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from mitmproxy import http

from addons.gate import Gate
from addons.rewrite import Rewrite
from tests.addons.proxy import CONFIG, MESSAGE, configured, llm_flow

POLICY = "Answer in English."
RULES = (
    CONFIG
    + f"""
[rules]
max_tokens_default = 2048

[[rules.system_blocks]]
name = "policy"
text = "{POLICY}"
"""
)


def parts(core):  # type: ignore[no-untyped-def]
    return [Gate(core), Rewrite(core)]


def rewritten(tmp_path: Path, body: dict[str, object] | bytes, config: str = RULES):  # type: ignore[no-untyped-def]
    flow = llm_flow(body)
    with configured(tmp_path, parts, config) as proxy:
        asyncio.run(proxy.hook("request", flow))
        return flow, proxy.record(flow)


def test_a_system_block_is_added_and_the_row_records_it(tmp_path: Path) -> None:
    flow, call = rewritten(tmp_path, MESSAGE)
    body = json.loads(flow.request.content or b"")
    assert [block["text"] for block in body["system"]] == [POLICY]
    assert body["messages"] == MESSAGE["messages"] and body["model"] == MESSAGE["model"]
    assert int(flow.request.headers["content-length"]) == len(flow.request.raw_content or b"")
    assert "system_block:policy" in call.rules_applied


def test_the_clients_end_user_id_goes_into_the_body(tmp_path: Path) -> None:
    flow, _ = rewritten(tmp_path, MESSAGE)
    assert json.loads(flow.request.content or b"")["metadata"]["user_id"] == "alice@example.com"


def test_a_missing_max_tokens_gets_the_default(tmp_path: Path) -> None:
    flow, call = rewritten(tmp_path, {key: value for key, value in MESSAGE.items() if key != "max_tokens"})
    assert json.loads(flow.request.content or b"")["max_tokens"] == 2048
    assert any(rule.startswith("max_tokens") for rule in call.rules_applied)


def test_a_body_no_rule_changes_goes_byte_for_byte(tmp_path: Path) -> None:
    sent = b'{"model":  "claude-haiku-4-5", "max_tokens": 10, "messages": []}'
    flow, call = rewritten(tmp_path, sent, CONFIG.replace('user_id = "alice@example.com"', ""))
    assert flow.request.raw_content == sent
    assert call.rules_applied == [] and call.notes == []


def test_a_body_the_rules_cannot_read_goes_as_it_came_and_the_row_says_why(tmp_path: Path) -> None:
    sent = b"this is not JSON"
    flow, call = rewritten(tmp_path, sent)
    assert flow.request.raw_content == sent
    assert call.rules_applied == []
    assert call.notes and "JSON" in call.notes[0]


def test_a_request_that_is_not_an_llm_call_is_not_touched(tmp_path: Path) -> None:
    flow = llm_flow(MESSAGE, path="/v1/files")
    sent = flow.request.raw_content
    with configured(tmp_path, parts, RULES) as proxy:
        asyncio.run(proxy.hook("request", flow))
        assert proxy.record(flow) is None
    assert flow.request.raw_content == sent


def test_the_parsed_request_is_let_go_once_the_answer_starts(tmp_path: Path) -> None:
    flow = llm_flow(MESSAGE)
    with configured(tmp_path, parts, RULES) as proxy:
        asyncio.run(proxy.hook("request", flow))
        call = proxy.record(flow)
        assert call.request_json is not None and call.request_json_before is not None
        flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
        asyncio.run(proxy.hook("responseheaders", flow))
        assert call.request_json is None and call.request_json_before is None


def test_the_parsed_request_is_kept_while_ops_exports_prompt_content(tmp_path: Path) -> None:
    flow = llm_flow(MESSAGE)
    with configured(tmp_path, parts, RULES) as proxy:
        proxy.core.keeps_request_json = True
        asyncio.run(proxy.hook("request", flow))
        flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
        asyncio.run(proxy.hook("responseheaders", flow))
        assert proxy.record(flow).request_json["messages"] == MESSAGE["messages"]
