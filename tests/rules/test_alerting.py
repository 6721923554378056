"""rules/alerting.py: once per crossing, hold-down, bursts, and the webhook bodies."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from rules.alerting import AlertEvent, Burst, Crossings, webhook_body, window_reset_key


def test_a_condition_alerts_when_it_becomes_true_not_while_it_stays_true() -> None:
    crossings = Crossings(hold_down_s=0)
    seen = [
        crossings.update("quota_threshold", "5h", level >= 0.8, float(t))
        for t, level in enumerate([0.5, 0.85, 0.9, 0.95, 0.4, 0.81, 0.82])
    ]
    assert seen == [False, True, False, False, False, True, False]


def test_a_condition_already_true_at_first_sight_alerts() -> None:
    assert Crossings(hold_down_s=0).update("credential_disabled", "key", True, 0.0)


def test_hold_down_keeps_a_flapping_key_from_paging_again_and_again() -> None:
    crossings = Crossings(hold_down_s=300)
    flaps = [
        (0, True),
        (10, False),
        (20, True),
        (30, False),
        (200, True),
        (250, False),
        (301, True),
        (302, False),
    ]
    fired = [t for t, disabled in flaps if crossings.update("credential_disabled", "key", disabled, float(t))]
    assert fired == [0, 301]


def test_subjects_and_kinds_cross_independently() -> None:
    crossings = Crossings(hold_down_s=300)
    assert crossings.update("quota_threshold", "key1 5h", True, 0.0)
    assert crossings.update("quota_threshold", "key2 5h", True, 0.0)
    assert crossings.update("window_rejected", "key1 5h", True, 0.0)
    assert crossings.is_active("quota_threshold", "key1 5h")
    assert not crossings.is_active("quota_threshold", "key3 5h")


def test_negative_hold_down_is_refused() -> None:
    with pytest.raises(ValueError, match="hold_down_s"):
        Crossings(hold_down_s=-1)


def test_a_burst_is_count_events_within_the_window() -> None:
    burst = Burst(count=3, window_s=60)
    assert [burst.add("alice", t) for t in (0.0, 10.0, 20.0)] == [False, False, True]
    assert burst.add("bob", 21.0) is False  # per subject
    assert burst.add("alice", 100.0) is False  # 10, 20, 100: not within 60 s
    assert burst.add("alice", 110.0) is False
    assert burst.add("alice", 120.0) is True  # 100, 110, 120


def test_a_burst_remembers_a_bounded_number_of_subjects() -> None:
    burst = Burst(count=2, window_s=60, max_subjects=2)
    burst.add("a", 0.0)
    burst.add("b", 0.0)
    burst.add("c", 0.0)  # forgets "a"
    assert burst.add("a", 1.0) is False
    assert burst.add("c", 1.0) is True


@pytest.mark.parametrize(("count", "window"), [(0, 60.0), (3, 0.0)])
def test_a_burst_needs_a_count_and_a_window(count: int, window: float) -> None:
    with pytest.raises(ValueError):
        Burst(count, window)


EVENT = AlertEvent(
    kind="quota_threshold",
    subject="api.anthropic.com keys[0] env:KEY 5h",
    message="5h window at 85%",
    at=datetime(2026, 12, 4, 12, 0, tzinfo=UTC).timestamp(),
    dedup="x",
    details={"utilization": 0.85},
)


def test_the_generic_body_is_json_with_event_subject_and_details() -> None:
    assert json.loads(webhook_body(EVENT, "json")) == {
        "source": "sluice",
        "event": "quota_threshold",
        "subject": "api.anthropic.com keys[0] env:KEY 5h",
        "message": "5h window at 85%",
        "at": "2026-12-04T12:00:00+00:00",
        "details": {"utilization": 0.85},
    }


def test_the_slack_body_is_text() -> None:
    assert json.loads(webhook_body(EVENT, "slack")) == {"text": ":rotating_light: sluice: 5h window at 85%"}


def test_a_window_crossing_is_named_by_its_reset() -> None:
    assert window_reset_key(datetime(2026, 12, 4, 15, 0, tzinfo=UTC)) == "2026-12-04T15:00:00+00:00"
    assert window_reset_key(None) == "-"
