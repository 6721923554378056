from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
import sqlite_utils

from state import html_report
from state import store as state_db

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def call(n: int, started: datetime, **columns: Any) -> dict[str, Any]:
    row = {"id": f"c{n}", "started_at": started.isoformat(), "host": "h", "path": "/v1/messages", "stream": 0}
    answered = {"status": 200, "provider": "anthropic", "api": "messages", "model": "claude-sonnet-4-5"}
    return row | answered | {"client": "alice"} | columns


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.titles: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_title = tag == "title"

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.titles.append(data)
            self._in_title = False


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    return tags


@pytest.fixture
def db() -> sqlite_utils.Database:
    return state_db.connect(memory=True)


@pytest.mark.parametrize(
    ("value", "top"),
    [
        (0, 1.0),
        (-3, 1.0),
        (0.7, 1.0),
        (1, 1.0),
        (1.2, 2.0),
        (2.2, 2.5),
        (3, 5.0),
        (7, 10.0),
        (0.013, 0.02),
        (4200, 5000.0),
    ],
)
def test_nice_ceiling(value: float, top: float) -> None:
    assert html_report.nice_ceiling(value) == pytest.approx(top)


def test_an_empty_database_gives_a_page_that_says_so(db: sqlite_utils.Database) -> None:
    page = html_report.render(db, now=NOW)
    assert "Nothing recorded in this period." in page and "<svg" not in page
    assert parse(page).tags[:2] == ["html", "head"]


def test_days_with_no_calls_still_get_their_place_on_the_axis(db: sqlite_utils.Database) -> None:
    db["calls"].insert_all(
        [
            call(1, NOW - timedelta(days=4), cost_usd=1.0, input_tokens=10),
            call(2, NOW, cost_usd=2.0, input_tokens=20, model="claude-opus-4-1"),
        ]
    )
    page = html_report.render(db, now=NOW)
    titles = parse(page).titles
    assert "2026-11-19 · claude-sonnet-4-5: $1.00" in titles
    assert "2026-11-23 · claude-opus-4-1: $2.00" in titles
    assert "per day (UTC)" in page
    for day in ("11-19", "11-20", "11-21", "11-22", "11-23"):
        assert f">{day}</text>" in page


def test_two_days_or_less_are_drawn_per_hour(db: sqlite_utils.Database) -> None:
    db["calls"].insert_all([call(1, NOW - timedelta(hours=3), cost_usd=0.5), call(2, NOW, cost_usd=0.25)])
    page = html_report.render(db, since=NOW - timedelta(days=1), now=NOW)
    assert "per hour (UTC)" in page
    assert "2026-11-23T09:00Z · claude-sonnet-4-5: $0.50" in parse(page).titles
    assert "calls since 2026-11-22 12:00 UTC" in page


def test_many_models_are_summed_into_other(db: sqlite_utils.Database) -> None:
    db["calls"].insert_all([call(n, NOW, model=f"model-{n:02d}", cost_usd=float(n + 1)) for n in range(12)])
    page = html_report.render(db, now=NOW)
    assert "other (4)" in page and "model-11" in page and "model-00" in page  # the table lists them all
    assert "<script" not in page


def test_names_are_escaped(db: sqlite_utils.Database) -> None:
    db["calls"].insert(call(1, NOW, model="<b>evil</b>", client="a&b", cost_usd=1.0))
    page = html_report.render(db, now=NOW)
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page and "a&amp;b" in page


def test_unpriced_calls_show_as_unpriced_never_as_zero_dollars(db: sqlite_utils.Database) -> None:
    db["calls"].insert_all(
        [
            call(1, NOW, model="claude-new", input_tokens=10, output_tokens=5),  # no price known
            call(2, NOW, model="claude-new", status=529, error="overloaded_error: busy"),  # failed: an error
            call(3, NOW, model="claude-sonnet-4-5", cost_usd=0.5, input_tokens=10, output_tokens=5),
            call(4, NOW, model="claude-sonnet-4-5", input_tokens=10, output_tokens=5),  # no price either
        ]
    )
    page = html_report.render(db, now=NOW)
    rows = {row.split("</td>")[0]: row for row in page.split("<tr><td>")[1:]}
    assert "<td>unpriced</td><td>1</td><td>1</td>" in rows["claude-new"]  # cost, unpriced, errors
    assert "<td>$0.50 + 1 unpriced</td><td>1</td><td>0</td>" in rows["claude-sonnet-4-5"]
    assert "<div>unpriced<b>2</b></div>" in page and "<div>errors<b>1</b></div>" in page
    assert "<td>$0</td>" not in page  # (the chart axis starts at $0)
