from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rules.times import parse_duration, parse_reset

OBSERVED = datetime(2026, 11, 23, 3, 45, 50, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return OBSERVED + timedelta(seconds=seconds)


def epoch(moment: datetime) -> str:
    return str(int(moment.timestamp()))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 3339, as Anthropic's standard limits send it
        ("2026-11-23T03:46:02Z", datetime(2026, 11, 23, 3, 46, 2, tzinfo=UTC)),
        ("2026-11-23T03:46:02.5Z", datetime(2026, 11, 23, 3, 46, 2, 500000, tzinfo=UTC)),
        ("2026-11-23T04:46:02+01:00", datetime(2026, 11, 23, 3, 46, 2, tzinfo=UTC)),
        ("2026-11-23t03:46:02z", datetime(2026, 11, 23, 3, 46, 2, tzinfo=UTC)),
        ("2026-11-23 03:46:02Z", datetime(2026, 11, 23, 3, 46, 2, tzinfo=UTC)),
        (" 2026-11-23T03:46:02Z ", datetime(2026, 11, 23, 3, 46, 2, tzinfo=UTC)),
        # epoch seconds, as Anthropic's unified limits send them
        ("1785182400", datetime(2026, 7, 27, 20, 0, tzinfo=UTC)),
        ("1785182400.25", datetime(2026, 7, 27, 20, 0, 0, 250000, tzinfo=UTC)),
        # small bare numbers are seconds from the observation (retry-after)
        ("30", at(30)),
        ("0", OBSERVED),
        ("1.5", at(1.5)),
        # OpenAI / Go durations, from the observation
        ("6m0s", at(360)),
        ("1s", at(1)),
        ("12ms", at(0.012)),
        ("1h2m3.5s", at(3723.5)),
        ("0s", OBSERVED),
        ("2m59.56s", at(179.56)),
        ("250us", at(0.00025)),
        ("250µs", at(0.00025)),
        ("3d", at(3 * 86400)),
        # HTTP-date, which retry-after may carry
        ("Mon, 23 Nov 2026 03:50:00 GMT", datetime(2026, 11, 23, 3, 50, tzinfo=UTC)),
        # not a reset
        ("", None),
        ("soon", None),
        ("-5s", None),
        ("6x", None),
        ("1h2", None),
        ("2026-13-45T99:00:00Z", None),
        ("99999999999999999999", None),
    ],
)
def test_parse_reset(value: str, expected: datetime | None) -> None:
    assert parse_reset(value, OBSERVED) == expected


def test_parse_reset_takes_a_naive_observation_as_utc() -> None:
    assert parse_reset("6m0s", datetime(2026, 11, 23, 3, 45, 50)) == at(360)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6m0s", timedelta(minutes=6)),
        ("1h2m3.5s", timedelta(hours=1, minutes=2, seconds=3.5)),
        ("12ms", timedelta(milliseconds=12)),
        ("1500ns", timedelta(microseconds=2)),  # rounded to the microsecond
        (".5s", timedelta(milliseconds=500)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("0", timedelta(0)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "m", "5 m", "1h 2m", "-1s", "1.2.3s", "99999999999w"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
