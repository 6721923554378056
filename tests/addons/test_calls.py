"""Pricing and budget settlement of a finished call's record (addons/calls.py)."""

from __future__ import annotations

import pytest

from addons.calls import Call, build_record
from rules.usage import Reading, Usage

HOLD = 0.5


def record(model: str, usage: Usage, *, hold: float | None = HOLD, stand_in: str | None = None):
    call = Call("f1", "api.anthropic.com", "POST", "/v1/messages", "anthropic", "messages", 0.0)
    call.request_model = model
    call.budget_hold = hold
    call.price_unknown_as = stand_in
    reading = Reading(model=model, usage=usage, usage_seen=True, complete=True)
    return build_record(
        call, reading, status=200, error=None, request_id=None, rate_limits=[], headers_at=None, ended=1.0
    )


def test_a_priced_call_settles_at_its_cost():
    done = record("claude-sonnet-4-5", Usage(input_tokens=1000, output_tokens=100))
    assert done.row["cost_usd"] == pytest.approx((1000 * 3 + 100 * 15) / 1e6)
    assert done.budget == ("settled", done.row["cost_usd"])


def test_an_unpriced_model_settles_at_the_estimate_not_for_free():
    done = record("claude-imaginary-9", Usage(input_tokens=1000, output_tokens=100))
    assert done.row["cost_usd"] is None and "claude-imaginary-9" in done.row["cost_note"]
    assert done.budget == ("settled", HOLD)


def test_an_unpriced_model_is_charged_as_the_named_one():
    done = record(
        "claude-imaginary-9", Usage(input_tokens=1000, output_tokens=100), stand_in="claude-opus-4-1"
    )
    assert done.row["cost_usd"] == pytest.approx((1000 * 15 + 100 * 75) / 1e6)
    assert done.row["cost_note"].startswith("priced as claude-opus-4-1")
    assert done.budget == ("settled", done.row["cost_usd"])


def test_suspect_usage_is_stored_unpriced_and_settles_at_the_estimate():
    usage = Usage(input_tokens=21, suspect=f"output_tokens={10**30}")
    done = record("claude-sonnet-4-5", usage)
    assert done.row["cost_usd"] is None
    assert done.row["cost_note"].startswith("suspect usage") and str(10**30) in done.row["cost_note"]
    assert done.row["input_tokens"] == 21 and done.row["output_tokens"] is None
    assert done.budget == ("settled", HOLD)


def test_an_unbudgeted_call_is_not_priced_as_anything_else():
    done = record("claude-imaginary-9", Usage(input_tokens=1000, output_tokens=100), hold=None)
    assert done.row["cost_usd"] is None and done.budget is None
