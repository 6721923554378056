from __future__ import annotations

from typing import Any

import pytest
from mitmproxy import flowfilter
from mitmproxy.test import tflow

from addons.annotate import MARKS, annotate, flags

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
        "#cache-miss claude-sonnet-4-5 · in 12 · out 3 · $0.0001 · cache miss: prefix changed at system[0]"
    )
    for expression in ("~marked", "~marker broken_heart", '~comment "#cache-miss"'):
        assert flowfilter.match(expression, flow), expression
    assert not flowfilter.match('~comment "#rate-limited"', flow)


def test_an_unflagged_call_is_only_commented_and_a_users_mark_is_kept() -> None:
    flow = tflow.tflow(resp=True)
    annotate(flow, ROW)
    assert (flow.marked, flow.comment) == ("", "claude-sonnet-4-5 · in 12 · out 3 · $0.0001")
    assert not flowfilter.match("~marked", flow)
    mine = tflow.tflow(resp=True)
    mine.marked = ":star:"
    annotate(mine, ROW | {"status": 429, "error": "rate_limit_error: x"})
    assert mine.marked == ":star:" and mine.comment.startswith("#rate-limited ")
