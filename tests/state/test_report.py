from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlite_utils

from state import report
from state import store as state_db
from state.ratelimits import Limit

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)


def call(started_at: datetime, **columns: Any) -> dict[str, Any]:
    """A `calls` row as the writer records it: a messages call by default."""
    row: dict[str, Any] = {
        "id": f"call-{next(_ids)}",
        "started_at": started_at.isoformat(),
        "client": "alice",
        "host": "api.anthropic.com",
        "method": "POST",
        "path": "/v1/messages",
        "provider": "anthropic",
        "api": "messages",
        "model": "claude-sonnet-4-5",
        "stream": 1,
        "status": 200,
    }
    return row | columns


@pytest.fixture
def db() -> sqlite_utils.Database:
    return state_db.connect(memory=True)


@pytest.fixture
def filled(db: sqlite_utils.Database) -> sqlite_utils.Database:
    db["calls"].insert_all(
        [
            call(
                NOW - timedelta(days=10),
                input_tokens=1_234_567,
                cache_read_tokens=100,
                cache_write_5m_tokens=10,
                cache_write_1h_tokens=5,
                output_tokens=999,
                cost_usd=0.1,
            ),
            call(NOW - timedelta(hours=2), input_tokens=10, output_tokens=20, cost_usd=0.2),
            call(
                NOW - timedelta(hours=1),
                client="bob",
                host="api.openai.com",
                path="/v1/chat/completions",
                provider="openai",
                api="chat",
                model="gpt-5",
                input_tokens=50,
                cache_read_tokens=7,
                output_tokens=70,
                reasoning_tokens=20,
                cost_usd=0.000_012_5,
            ),
            # a 429 before any usage: an error, unpriced
            call(
                NOW - timedelta(hours=1),
                client="bob",
                host="api.openai.com",
                provider="openai",
                api="chat",
                model="gpt-5",
                status=429,
                error="rate_limit_exceeded",
            ),
            # counted, not billed: neither unpriced nor an error
            call(
                NOW - timedelta(minutes=5),
                path="/v1/messages/count_tokens",
                api="count_tokens",
                counted_tokens=42,
                cost_usd=0.0,
            ),
            # a model sluice has no price for, from an unnamed client
            call(
                NOW - timedelta(minutes=1),
                client=None,
                model="claude-new",
                input_tokens=3,
                output_tokens=4,
            ),
            # an error inside a 200 stream
            call(NOW - timedelta(minutes=1), model="claude-new", error="overloaded_error", output_tokens=1),
        ]
    )
    return db


def test_usage_groups_by_day_and_model_by_default(filled: sqlite_utils.Database) -> None:
    usage = report.usage(filled)
    assert usage.group_by == ("day", "model")
    assert [row.to_dict() for row in usage.rows] == [
        {
            "day": "2026-11-13",
            "model": "claude-sonnet-4-5",
            "calls": 1,
            "input_tokens": 1_234_567,
            "cache_read_tokens": 100,
            "cache_write_tokens": 15,
            "cache_write_5m_tokens": 10,
            "cache_write_1h_tokens": 5,
            "output_tokens": 999,
            "reasoning_tokens": 0,
            "cost_usd": 0.1,
            "unpriced_calls": 0,
            "errors": 0,
        },
        {
            "day": "2026-11-23",
            "model": "claude-new",
            "calls": 2,
            "input_tokens": 3,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "cache_write_5m_tokens": 0,
            "cache_write_1h_tokens": 0,
            "output_tokens": 5,
            "reasoning_tokens": 0,
            "cost_usd": 0.0,
            "unpriced_calls": 1,  # the other call failed: an error, not an unpriced call
            "errors": 1,
        },
        {
            "day": "2026-11-23",
            "model": "claude-sonnet-4-5",
            "calls": 2,
            "input_tokens": 10,
            "cache_read_tokens": 0,
            "cache_write_tokens": 0,
            "cache_write_5m_tokens": 0,
            "cache_write_1h_tokens": 0,
            "output_tokens": 20,
            "reasoning_tokens": 0,
            "cost_usd": 0.2,
            "unpriced_calls": 0,
            "errors": 0,
        },
        {
            "day": "2026-11-23",
            "model": "gpt-5",
            "calls": 2,
            "input_tokens": 50,
            "cache_read_tokens": 7,
            "cache_write_tokens": 0,
            "cache_write_5m_tokens": 0,
            "cache_write_1h_tokens": 0,
            "output_tokens": 70,
            "reasoning_tokens": 20,
            "cost_usd": 0.0000125,
            "unpriced_calls": 0,
            "errors": 1,
        },
    ]


def test_usage_total_is_exact(filled: sqlite_utils.Database) -> None:
    total = report.usage(filled).total
    assert total.group == {}
    assert (total.calls, total.input_tokens, total.cache_read_tokens, total.cache_write_tokens) == (
        7,
        1_234_630,
        107,
        15,
    )
    assert (total.output_tokens, total.reasoning_tokens, total.unpriced_calls, total.errors) == (
        1094,
        20,
        1,
        2,
    )
    # 0.1 + 0.2 + 0.0000125 as written, not as binary floats add up (0.30001250000000004)
    assert total.cost_usd == Decimal("0.3000125")
    assert total.to_dict()["cost_usd"] == 0.3000125


@pytest.mark.parametrize(
    ("group_by", "expected"),
    [
        (("client",), [({"client": None}, 1), ({"client": "alice"}, 4), ({"client": "bob"}, 2)]),
        (
            ("provider", "api"),
            [("anthropic", "count_tokens", 1), ("anthropic", "messages", 4), ("openai", "chat", 2)],
        ),
        (("host",), [({"host": "api.anthropic.com"}, 5), ({"host": "api.openai.com"}, 2)]),
        (("region",), [({"region": None}, 7)]),
    ],
)
def test_usage_group_by(
    filled: sqlite_utils.Database, group_by: tuple[str, ...], expected: list[Any]
) -> None:
    rows = report.usage(filled, group_by=group_by).rows
    if group_by == ("provider", "api"):
        assert [(row.group["provider"], row.group["api"], row.calls) for row in rows] == expected
    else:
        assert [(row.group, row.calls) for row in rows] == expected


def test_usage_since_and_until(filled: sqlite_utils.Database) -> None:
    last_week = report.usage(filled, group_by=["day"], since=NOW - timedelta(days=7))
    assert [(row.group["day"], row.calls) for row in last_week.rows] == [("2026-11-23", 6)]
    before = report.usage(filled, group_by=["day"], until=NOW - timedelta(hours=1))
    assert [(row.group["day"], row.calls) for row in before.rows] == [("2026-11-13", 1), ("2026-11-23", 1)]
    window = report.usage(filled, since=NOW - timedelta(hours=1), until=NOW - timedelta(minutes=1))
    assert window.total.calls == 3  # since is inclusive, until exclusive
    assert report.usage(filled, since=NOW).rows == ()
    assert report.usage(filled, since=NOW).total.calls == 0


def test_usage_bounds_compare_as_utc(db: sqlite_utils.Database) -> None:
    db["calls"].insert(call(datetime(2026, 11, 23, 0, 30, tzinfo=UTC)))
    tokyo = datetime.fromisoformat("2026-11-23T09:00:00+09:00")  # midnight UTC
    assert report.usage(db, since=tokyo).total.calls == 1
    assert report.usage(db, until=tokyo).total.calls == 0


def test_usage_of_an_empty_database(db: sqlite_utils.Database) -> None:
    usage = report.usage(db)
    assert usage.rows == ()
    assert usage.total.calls == 0
    assert usage.total.cost_usd == 0
    assert report.count_calls(db) == 0


def test_usage_rejects_unknown_groups(db: sqlite_utils.Database) -> None:
    with pytest.raises(ValueError, match="cannot group by colour: choose from day, model"):
        report.usage(db, group_by=["colour"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("day", ("day",)),
        ("day,model", ("day", "model")),
        (" Model , client,model ", ("model", "client")),
        ("provider,api,host", ("provider", "api", "host")),
    ],
)
def test_parse_group_by(text: str, expected: tuple[str, ...]) -> None:
    assert report.parse_group_by(text) == expected


@pytest.mark.parametrize("text", ["", ",", "day,week", "tokens"])
def test_parse_group_by_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        report.parse_group_by(text)


@pytest.mark.parametrize(
    ("text", "end_of_day", "expected"),
    [
        ("7d", False, NOW - timedelta(days=7)),
        ("24h", False, NOW - timedelta(hours=24)),
        ("30m", False, NOW - timedelta(minutes=30)),
        ("1h30m", False, NOW - timedelta(minutes=90)),
        ("2026-11-20", False, datetime(2026, 11, 20, tzinfo=UTC)),
        ("2026-11-20", True, datetime(2026, 11, 21, tzinfo=UTC)),
        ("2026-11-20T10:00", True, datetime(2026, 11, 20, 10, tzinfo=UTC)),
        ("2026-11-20T10:00:00+02:00", False, datetime(2026, 11, 20, 8, tzinfo=UTC)),
        ("2026-11-20T10:00:00Z", False, datetime(2026, 11, 20, 10, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, end_of_day: bool, expected: datetime) -> None:
    assert report.parse_time(text, NOW, end_of_day=end_of_day) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "7", "2026-13-01", "-7d"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        report.parse_time(text, NOW)


def _rate_limit(
    credential: str, header: str, value: str, observed_at: datetime, call_id: str
) -> dict[str, Any]:
    return {
        "host": "api.openai.com" if header.startswith("x-") else "api.anthropic.com",
        "credential": credential,
        "header": header,
        "value": value,
        "observed_at": observed_at.isoformat(),
        "call_id": call_id,
    }


def test_rate_limit_observations_gather_per_credential(db: sqlite_utils.Database) -> None:
    earlier = NOW - timedelta(hours=3)
    db["rate_limits"].insert_all(
        [
            _rate_limit("key-1", "anthropic-ratelimit-requests-limit", "50", NOW, "c2"),
            _rate_limit("key-1", "anthropic-ratelimit-requests-remaining", "49", NOW, "c2"),
            _rate_limit("key-1", "anthropic-ratelimit-unified-overage-status", "rejected", earlier, "c1"),
            _rate_limit("sk-1", "x-ratelimit-limit-requests", "60", earlier, "c3"),
            _rate_limit("sk-1", "x-ratelimit-reset-requests", "1s", earlier, "c3"),
            _rate_limit("key-2", "anthropic-ratelimit-requests-limit", "50", NOW, "c4"),
        ]
    )
    observations = report.rate_limit_observations(db)
    assert [(o.host, o.credential, o.observed_at, o.call_id) for o in observations] == [
        ("api.anthropic.com", "key-1", NOW, "c2"),
        ("api.anthropic.com", "key-2", NOW, "c4"),
        ("api.openai.com", "sk-1", earlier, "c3"),
    ]
    assert observations[0].headers == {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-unified-overage-status": "rejected",
    }
    assert observations[0].seen_at["anthropic-ratelimit-unified-overage-status"] == earlier
    assert [o.credential for o in report.rate_limit_observations(db, credential="key-2")] == ["key-2"]
    assert [o.credential for o in report.rate_limit_observations(db, host="api.openai.com")] == ["sk-1"]


def test_quota_summarizes_each_credential(db: sqlite_utils.Database) -> None:
    earlier = NOW - timedelta(hours=3)
    db["rate_limits"].insert_all(
        [
            _rate_limit("sk-1", "x-ratelimit-limit-tokens", "150000", NOW, "c3"),
            _rate_limit("sk-1", "x-ratelimit-remaining-tokens", "149984", NOW, "c3"),
            _rate_limit("sk-1", "x-ratelimit-reset-tokens", "6m0s", earlier, "c2"),
        ]
    )
    [quota] = report.quota(db)
    assert quota.host == "api.openai.com"
    assert quota.call_id == "c3"
    # the reset counts from when its own header was seen, not from the newest observation
    assert quota.summary.limits == (
        Limit("openai", "tokens", 150000, 149984, earlier + timedelta(minutes=6), NOW),
    )
    record = quota.to_dict()
    assert (record["host"], record["credential"], record["call_id"]) == ("api.openai.com", "sk-1", "c3")
    assert record["observed_at"] == NOW.isoformat()


def test_rate_limit_header_names_fold_case_and_the_newest_wins(db: sqlite_utils.Database) -> None:
    earlier = NOW - timedelta(minutes=1)
    db["rate_limits"].insert_all(
        [
            _rate_limit("k", "Anthropic-RateLimit-Requests-Remaining", "48", NOW, "c2"),
            _rate_limit("k", "anthropic-ratelimit-requests-remaining", "49", earlier, "c1"),
        ]
    )
    [observation] = report.rate_limit_observations(db)
    assert observation.headers == {"anthropic-ratelimit-requests-remaining": "48"}
    assert observation.seen_at == {"anthropic-ratelimit-requests-remaining": NOW}


def test_quota_of_an_empty_database(db: sqlite_utils.Database) -> None:
    assert report.quota(db) == []


def test_rate_limit_rows_without_a_readable_time_are_left_out(db: sqlite_utils.Database) -> None:
    db["rate_limits"].insert(_rate_limit("k", "anthropic-ratelimit-requests-limit", "5", NOW, "c1"))
    db["rate_limits"].insert(
        _rate_limit("k", "anthropic-ratelimit-tokens-limit", "5", NOW, "c1") | {"observed_at": "last tuesday"}
    )
    [observation] = report.rate_limit_observations(db)
    assert list(observation.headers) == ["anthropic-ratelimit-requests-limit"]


# --- sessions and 5-hour blocks --------------------------------------------------------------------------


def _at(text: str) -> datetime:
    return datetime.fromisoformat(f"2026-11-20T{text}:00+00:00")


@pytest.mark.parametrize(
    ("times", "starts"),
    [
        ([], []),
        # one block from the hour of the first call, for five hours
        (["09:12", "10:00", "13:59"], ["09:00", "09:00", "09:00"]),
        # the first call at or after 14:00 opens the next block, at its own hour
        (["09:12", "13:59", "14:00", "18:59"], ["09:00", "09:00", "14:00", "14:00"]),
        # a gap of five hours or more always opens a block
        (["09:12", "14:30"], ["09:00", "14:00"]),
        (["00:05", "00:06", "07:59"], ["00:00", "00:00", "07:00"]),
    ],
)
def test_five_hour_blocks(times: list[str], starts: list[str]) -> None:
    assert report.five_hour_blocks(_at(t) for t in times) == [_at(s) for s in starts]


def test_usage_by_block_counts_blocks_over_all_calls(db: sqlite_utils.Database) -> None:
    db["calls"].insert_all(
        [
            call(_at("09:12"), cost_usd=0.1),
            call(_at("12:00"), cost_usd=0.2, model="claude-opus-4-1"),
            call(_at("15:30"), cost_usd=0.4),
        ]
    )
    usage = report.usage(db, group_by=["block"])
    assert [(r.group["block"], r.calls, r.cost_usd, r.first_call_at, r.last_call_at) for r in usage.rows] == [
        ("2026-11-20T09:00Z", 2, Decimal("0.3"), _at("09:12").isoformat(), _at("12:00").isoformat()),
        ("2026-11-20T15:00Z", 1, Decimal("0.4"), _at("15:30").isoformat(), _at("15:30").isoformat()),
    ]
    # --since cuts calls, not blocks: the block still starts at 09:00
    later = report.usage(db, group_by=["block", "model"], since=_at("10:00"))
    assert [(r.group["block"], r.group["model"], r.calls) for r in later.rows] == [
        ("2026-11-20T09:00Z", "claude-opus-4-1", 1),
        ("2026-11-20T15:00Z", "claude-sonnet-4-5", 1),
    ]


def test_usage_by_session_in_the_order_sessions_began(db: sqlite_utils.Database) -> None:
    db["calls"].insert_all(
        [
            call(_at("10:00"), session_id="zzz-early", cost_usd=0.1),
            call(_at("11:00"), session_id="aaa-late", cost_usd=0.2),
            call(_at("12:00"), session_id="zzz-early", cost_usd=0.3),
            call(_at("12:30")),
        ]
    )
    rows = report.usage(db, group_by=["session"]).rows
    assert [(r.group["session"], r.calls, r.first_call_at) for r in rows] == [
        ("zzz-early", 2, _at("10:00").isoformat()),
        ("aaa-late", 1, _at("11:00").isoformat()),
        (None, 1, _at("12:30").isoformat()),
    ]
    assert list(rows[0].to_dict())[:3] == ["session", "first_call_at", "last_call_at"]
    assert "first_call_at" not in report.usage(db, group_by=["model"]).rows[0].to_dict()


def test_usage_by_cloud_region(db: sqlite_utils.Database) -> None:
    at = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    db["calls"].insert(call(at, region="us-east-1", provider="bedrock"))
    db["calls"].insert(call(at + timedelta(minutes=1), region="eu-west-3", provider="bedrock"))
    db["calls"].insert(call(at + timedelta(minutes=2), region="us-east-1", provider="bedrock"))
    rows = report.usage(db, group_by=["provider", "region"]).rows
    assert [(row.group["region"], row.calls) for row in rows] == [("eu-west-3", 1), ("us-east-1", 2)]
