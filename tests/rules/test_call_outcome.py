"""rules/call_outcome.py: one answer to "did this call fail", in Python and in SQL."""

from __future__ import annotations

import sqlite3

import pytest

from rules.call_outcome import ERROR_SQL, is_error

# (status, error) -> failed. No status: the call never got an answer.
ROWS = {
    (None, None): True,
    (None, ""): True,
    (None, "x"): True,
    (200, None): False,
    (200, ""): False,
    (200, "x"): True,  # a stream that broke after its 200
    (299, None): False,
    (299, "x"): True,
    (400, None): True,
    (400, "x"): True,
    (429, None): True,
    (429, "x"): True,
    (500, None): True,
    (500, "x"): True,
}


@pytest.mark.parametrize(("status", "error"), list(ROWS))
def test_a_call_failed_with_an_error_recorded_a_status_of_400_or_more_or_no_answer(
    status: int | None, error: str | None
) -> None:
    assert is_error({"status": status, "error": error}) is ROWS[(status, error)]


def test_the_sql_expression_gives_the_same_answers_as_the_predicate() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("create table calls (status integer, error text)")
    conn.executemany("insert into calls values (?, ?)", list(ROWS))
    found = {
        (status, error): bool(failed)
        for status, error, failed in conn.execute(f"select status, error, {ERROR_SQL} from calls")
    }
    assert found == {row: is_error({"status": row[0], "error": row[1]}) for row in ROWS}
    assert found == ROWS


def test_a_row_without_the_columns_never_got_an_answer() -> None:
    assert is_error({}) is True
