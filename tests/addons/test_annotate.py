from __future__ import annotations

from typing import Any

import pytest
from mitmproxy import flowfilter
from mitmproxy.test import tflow

from addons.annotate import MARK_SETS, MARKS, annotate, flags

ROW: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "api": "messages",
    "status": 200,
    "input_tokens": 12,
    "output_tokens": 3,
    "cost_usd": 0.0001,
}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, []),
        ({"status": 429, "error": "rate_limit_error: slow down"}, ["rate-limited"]),
        ({"status": 529, "error": "overloaded_error: Overloaded"}, ["rate-limited"]),
        ({"status": 200, "error": "overloaded_error: Overloaded"}, ["rate-limited"]),  # inside a 200 stream
        (
            {
                "status": 429,
                "rules_applied": '["note:refused: budget exhausted"]',
                "error": "rate_limit_error: x",
            },
            ["budget"],
        ),
        ({"status": 500, "error": "api_error: boom"}, ["error"]),
        ({"status": 401}, ["error"]),
        ({"status": None, "error": "connection lost: reset"}, ["error"]),
        ({"cache_status": "miss", "cache_note": "TTL expired"}, ["cache-miss"]),
        ({"cache_status": "hit"}, []),
        ({"status": 500, "error": "api_error: x", "cache_status": "miss"}, ["error", "cache-miss"]),
    ],
)
def test_flags(changes: dict[str, Any], expected: list[str]) -> None:
    assert flags(ROW | changes) == expected


def test_a_flagged_call_is_marked_and_tagged_and_can_be_filtered() -> None:
    flow = tflow.tflow(resp=True)
    annotate(flow, ROW | {"cache_status": "miss", "cache_note": "prefix changed at system[0]"})
    assert flow.marked == MARKS["cache-miss"] == ":broken_heart:"
    assert flow.comment == (
        "#cache-miss $0.0001 · in 12 · out 3 · claude-sonnet-4-5 · cache miss: prefix changed at system[0]"
    )
    for expression in ("~marked", "~marker broken_heart", '~comment "#cache-miss"'):
        assert flowfilter.match(expression, flow), expression
    assert not flowfilter.match('~comment "#rate-limited"', flow)


def test_an_unflagged_call_is_only_commented_and_a_users_mark_is_kept() -> None:
    flow = tflow.tflow(resp=True)
    annotate(flow, ROW)
    assert (flow.marked, flow.comment) == ("", "$0.0001 · in 12 · out 3 · claude-sonnet-4-5")
    assert not flowfilter.match("~marked", flow)
    mine = tflow.tflow(resp=True)
    mine.marked = ":star:"
    annotate(mine, ROW | {"status": 429, "error": "rate_limit_error: x"})
    assert mine.marked == ":star:" and mine.comment.startswith("#rate-limited ")


def test_cost_and_tokens_come_before_the_model_and_a_missing_price_is_named() -> None:
    flow = tflow.tflow(resp=True)
    annotate(flow, ROW | {"cost_usd": None, "model": "claude-new"})
    assert flow.comment == "unpriced · in 12 · out 3 · claude-new"
    annotate(flow, ROW | {"cost_usd": None, "status": 500, "error": "api_error: boom"})
    assert flow.comment == "#error in 12 · out 3 · claude-sonnet-4-5 · error: api_error: boom"


@pytest.mark.parametrize(
    ("marks", "expected"),
    [(MARK_SETS["symbols"], ":warning:"), (MARK_SETS["emoji"], ":x:"), (MARK_SETS["off"], "")],
)
def test_marks_can_be_symbols_text_fonts_have_or_off(marks: dict[str, str], expected: str) -> None:
    flow = tflow.tflow(resp=True)
    annotate(flow, ROW | {"status": 500, "error": "api_error: boom"}, marks)
    assert flow.marked == expected
    assert flow.comment.startswith("#error ")  # the tag is there whatever the mark


def test_every_symbol_mark_is_a_shortcode_mitmweb_shows_as_a_text_character() -> None:
    from mitmproxy.utils import emoji

    for flag, shortcode in MARK_SETS["symbols"].items():
        character = emoji.emoji[shortcode].replace("\ufe0f", "")
        assert len(character) == 1 and ord(character) < 0x2800, flag  # not in the emoji planes
    assert set(MARK_SETS["symbols"]) == set(MARKS)


@pytest.mark.parametrize(
    ("note", "flag"),
    [
        (
            "refused: budget exhausted (client alice: $1.00/day, $0.9900 used, resets 2026-12-05)",
            "budget",
        ),
        (
            "refused: team budget exhausted (team ci: $5.00/month, $5.0000 used, resets 2027-01-01)",
            "budget",
        ),
        ("refused: rate limit (client alice: rpm 60, 60 used, retry in 12 s)", "rate-limited"),
        (
            "refused: window share (client ci: 5h 60%, 62% used, resets 2026-12-04T15:00:00+00:00)",
            "rate-limited",
        ),
    ],
)
def test_sluices_refusals_are_marked_and_say_which_limit_in_the_comment(note: str, flag: str) -> None:
    row = ROW | {"status": 429, "cost_usd": 0.0, "rules_applied": f'["note:{note}"]'}
    flow = tflow.tflow()
    annotate(flow, row)
    assert flow.comment.startswith(f"#{flag} ") and flow.comment.endswith(f" · {note}")
    assert flow.marked == MARKS[flag]
