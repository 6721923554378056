"""Whether a call failed: one definition, for the views, the reports, the marks and the metrics.

A call failed when an error was recorded (the provider's error, a connection that broke, sluice's own
refusal), when its HTTP status is 400 or more, or when it has no status at all: it never got an answer.
`is_error` is that test over a `calls` row in Python; `ERROR_SQL` is the same test as an SQL expression
over the columns of `calls`, for queries (state/report.py). The views (state/store/migrations.py) write it
out literally, as a migration must; tests/rules/test_call_outcome.py holds all three to the same answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ERROR_SQL = "(coalesce(error, '') != '' or status is null or status >= 400)"


def is_error(row: Mapping[str, Any]) -> bool:
    """A call went wrong: an error was recorded, or the status is 400 or more, or none came at all."""
    status = row.get("status")
    return bool(row.get("error")) or not isinstance(status, int) or status >= 400
