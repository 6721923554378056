import copy
from typing import Any

import pytest

from rules.config import Rules, SystemBlock
from rules.providers import wire_format
from rules.providers.anthropic.request import backfill_max_tokens, strip_billing_block
from rules.rewrite import apply_request_rules, inject_system_blocks
from tests.rules.request_bodies import BILLING, IDENTITY, POLICY, anthropic_body, ctx, raw

MESSAGES = wire_format("messages")


# --- inject_system_blocks: Anthropic ------------------------------------------------------------------


def test_blocks_go_after_the_billing_block_and_the_clients_own() -> None:
    body = anthropic_body(system=[BILLING, {"type": "text", "text": "You are Claude Code."}])
    result = inject_system_blocks(body, [POLICY, IDENTITY], MESSAGES)
    assert result["system"] == [
        BILLING,
        {"type": "text", "text": "You are Claude Code."},
        {"type": "text", "text": "Follow the company policy."},
        {"type": "text", "text": "You work for ACME.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    assert list(result) == list(body)  # key order kept


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        (None, [{"type": "text", "text": POLICY.text}]),
        ("Be brief.", [{"type": "text", "text": "Be brief."}, {"type": "text", "text": POLICY.text}]),
        ("", [{"type": "text", "text": POLICY.text}]),  # an empty text block would be rejected
        ([], [{"type": "text", "text": POLICY.text}]),
    ],
)
def test_anthropic_system_shapes(system: Any, expected: list[dict[str, Any]]) -> None:
    body = anthropic_body() if system is None else anthropic_body(system=system)
    assert inject_system_blocks(body, [POLICY], MESSAGES)["system"] == expected


def test_five_minute_cache_writes_the_api_default_marker() -> None:
    block = SystemBlock(name="n", text="t", cache="5m")
    result = inject_system_blocks(anthropic_body(), [block], wire_format("count_tokens"))
    assert result["system"] == [{"type": "text", "text": "t", "cache_control": {"type": "ephemeral"}}]


@pytest.mark.parametrize(
    "system",
    [
        "Follow the company policy.",  # a string system that already says it stays a string
        [
            BILLING,
            {"type": "text", "text": "Follow the company policy.", "cache_control": {"type": "ephemeral"}},
        ],
        42,  # not a shape the API takes: not touched
    ],
)
def test_anthropic_nothing_to_inject_returns_the_same_body(system: Any) -> None:
    body = anthropic_body(system=system)
    assert inject_system_blocks(body, [POLICY], MESSAGES) is body


def test_string_system_stays_a_string_when_nothing_is_injected() -> None:
    body = anthropic_body(system="Be brief.")
    result = apply_request_rules(raw(body), ctx(rules=Rules(system_blocks=[])))
    assert result.body is None
    scoped_away = Rules(system_blocks=[SystemBlock(name="p", text="x", hosts=["other.example"])])
    assert apply_request_rules(raw(body), ctx(rules=scoped_away)).body is None


def test_duplicate_configured_blocks_are_injected_once() -> None:
    result = inject_system_blocks(anthropic_body(), [POLICY, POLICY], MESSAGES)
    assert len(result["system"]) == 1


def test_injection_does_not_mutate_its_input() -> None:
    body = anthropic_body(system=[BILLING])
    before = copy.deepcopy(body)
    inject_system_blocks(body, [POLICY], MESSAGES)
    assert body == before


# --- max_tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "default", "expected"),
    [
        ({"model": "m"}, 4096, {"model": "m", "max_tokens": 4096}),
        ({"model": "m", "max_tokens": None}, 4096, {"model": "m", "max_tokens": 4096}),
        ({"model": "m", "max_tokens": 10}, 4096, {"model": "m", "max_tokens": 10}),
        ({"model": "m"}, None, {"model": "m"}),
    ],
)
def test_backfill_max_tokens(body: dict[str, Any], default: int | None, expected: dict[str, Any]) -> None:
    assert backfill_max_tokens(body, default) == expected


# --- billing block ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "expected"),
    [
        ([BILLING, {"type": "text", "text": "a"}], [{"type": "text", "text": "a"}]),
        ([BILLING], None),  # the whole system was the block: no system at all
        (
            [{"type": "text", "text": "a"}, BILLING],
            [{"type": "text", "text": "a"}, BILLING],
        ),  # position 0 only
        ("x-anthropic-billing-header: a", "x-anthropic-billing-header: a"),
    ],
)
def test_strip_billing_block(system: Any, expected: Any) -> None:
    result = strip_billing_block(anthropic_body(system=system))
    assert result.get("system") == expected
