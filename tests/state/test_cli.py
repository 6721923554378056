from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from state import cli
from state import store as state_db
from state.cli import main

NOW = datetime.now(UTC)


@pytest.fixture(autouse=True)
def _pinned_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "clock", lambda: NOW)


ANTHROPIC = "api.anthropic.com"
OPENAI = "api.openai.com"


def _call(call_id: str, started_at: datetime, **columns: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": call_id,
        "started_at": started_at.isoformat(),
        "client": "alice",
        "host": ANTHROPIC,
        "path": "/v1/messages",
        "provider": "anthropic",
        "api": "messages",
        "model": "claude-sonnet-4-5",
        "stream": 1,
        "status": 200,
    }
    return row | columns


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "sluice.db"
    db = state_db.connect(path)
    db["calls"].insert_all(
        [
            _call(
                "old",
                NOW - timedelta(days=10),
                input_tokens=1_234_567,
                cache_read_tokens=2_000_000,
                cache_write_5m_tokens=10,
                cache_write_1h_tokens=5,
                output_tokens=999,
                cost_usd=1.5,
            ),
            _call("recent", NOW - timedelta(hours=1), input_tokens=10, output_tokens=20, cost_usd=0.0123),
            _call(
                "openai",
                NOW - timedelta(hours=1),
                client="bob",
                host=OPENAI,
                path="/v1/chat/completions",
                provider="openai",
                api="chat",
                model="gpt-5",
                input_tokens=50,
                cache_read_tokens=7,
                output_tokens=70,
                reasoning_tokens=20,
                cost_usd=0.00001,
            ),
            _call("limited", NOW - timedelta(minutes=5), client="bob", status=429, error="rate_limit_error"),
            _call(
                "counted",
                NOW - timedelta(minutes=5),
                path="/v1/messages/count_tokens",
                api="count_tokens",
                counted_tokens=42,
                cost_usd=0.0,
            ),
        ]
    )
    db.close()
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_usage_json_is_exact(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "usage", "--db", str(db_path), "--by", "provider", "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == [
        {
            "provider": "anthropic",
            "calls": 4,
            "input_tokens": 1_234_577,
            "cache_read_tokens": 2_000_000,
            "cache_write_tokens": 15,
            "cache_write_5m_tokens": 10,
            "cache_write_1h_tokens": 5,
            "output_tokens": 1019,
            "reasoning_tokens": 0,
            "cost_usd": 1.5123,
            "unpriced_calls": 0,  # the failed call has no cost either: it counts as an error only
            "errors": 1,
        },
        {
            "provider": "openai",
            "calls": 1,
            "input_tokens": 50,
            "cache_read_tokens": 7,
            "cache_write_tokens": 0,
            "cache_write_5m_tokens": 0,
            "cache_write_1h_tokens": 0,
            "output_tokens": 70,
            "reasoning_tokens": 20,
            "cost_usd": 1e-05,
            "unpriced_calls": 0,
            "errors": 0,
        },
    ]
    assert '"input_tokens": 1234577,' in out  # integers, not floats


def test_usage_csv_is_exact(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "usage", "--db", str(db_path), "--by", "client,api", "--csv")
    assert code == 0
    assert out == (
        "client,api,calls,input_tokens,cache_read_tokens,cache_write_tokens,cache_write_5m_tokens,"
        "cache_write_1h_tokens,output_tokens,reasoning_tokens,cost_usd,unpriced_calls,errors\n"
        "alice,count_tokens,1,0,0,0,0,0,0,0,0.0,0,0\n"
        "alice,messages,2,1234577,2000000,15,10,5,1019,0,1.5123,0,0\n"
        "bob,chat,1,50,7,0,0,0,70,20,1e-05,0,0\n"
        "bob,messages,1,0,0,0,0,0,0,0,0.0,0,1\n"
    )


def test_usage_table_shows_exact_numbers_and_a_total(
    db_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "60")  # narrower than the table: nothing may be cut
    code, out, _ = run(capsys, "usage", "--db", str(db_path))
    assert code == 0
    for text in [
        "Usage by day, model",
        "claude-sonnet-4-5",
        "gpt-5",
        "1,234,567",
        "2,000,000",
        "2,000,007",  # total cache read
        "1,234,627",  # total input
        "$1.5000",
        "$0.0123",
        "$0.00001",  # too small for four decimals: more are shown
        "$1.5123",
        "Total",
    ]:
        assert text in out, text
    assert "…" not in out
    total_line = next(line for line in out.splitlines() if "Total" in line)
    assert [cell.strip() for cell in total_line.split("│")[3:-1]] == [
        "5",
        "1,234,627",
        "2,000,007",
        "15",
        "1,089",
        "20",
        "$1.5123",
        "0",
        "1",
    ]


def test_usage_since_filters(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "usage", "--db", str(db_path), "--by", "model", "--since", "7d", "--json")
    assert code == 0
    assert [(row["model"], row["calls"], row["input_tokens"]) for row in json.loads(out)] == [
        ("claude-sonnet-4-5", 3, 10),
        ("gpt-5", 1, 50),
    ]
    code, out, _ = run(capsys, "usage", "--db", str(db_path), "--since", "30m", "--json", "--by", "api")
    assert [(row["api"], row["calls"]) for row in json.loads(out)] == [("count_tokens", 1), ("messages", 1)]


def test_usage_until_a_date_includes_that_day(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old_day = (NOW - timedelta(days=10)).date().isoformat()
    code, out, _ = run(capsys, "usage", "--db", str(db_path), "--until", old_day, "--by", "day", "--json")
    assert code == 0
    assert [(row["day"], row["calls"]) for row in json.loads(out)] == [(old_day, 1)]


def test_usage_with_nothing_in_range(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "usage", "--db", str(db_path), "--since", "1m")
    assert code == 0
    assert out.startswith("No calls since ")
    assert "(5 recorded in" in out


def test_usage_of_an_empty_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.db"
    state_db.connect(path).close()
    code, out, _ = run(capsys, "usage", "--db", str(path))
    assert code == 0
    assert out == f"No calls recorded in {path} yet: point a client at the proxy, then run this again.\n"
    assert run(capsys, "usage", "--db", str(path), "--json")[:2] == (0, "[]\n")
    assert run(capsys, "usage", "--db", str(path), "--csv")[1].count("\n") == 1  # the header only


@pytest.mark.parametrize("command", ["usage", "quota"])
def test_a_missing_database_is_an_error_and_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = tmp_path / "nowhere.db"
    code, out, err = run(capsys, command, "--db", str(path))
    assert code == 1
    assert out == ""
    assert err.startswith(f"sluice: error: no database at {path}")
    assert not path.exists()


def test_a_file_that_is_not_a_database_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not sqlite at all, just some text that is long enough to have a header" * 20)
    code, _, err = run(capsys, "usage", "--db", str(path))
    assert code == 1
    assert err.startswith(f"sluice: error: cannot open {path} as a sluice database")


def test_another_sqlite_database_is_not_taken_for_a_sluice_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as other:
        other.execute("create table notes (text)")
    code, _, err = run(capsys, "usage", "--db", str(path))
    assert code == 1
    assert err == f"sluice: error: cannot open {path} as a sluice database: it has no sluice tables\n"
    with sqlite3.connect(path) as other:
        tables = [row[0] for row in other.execute("select name from sqlite_master where type = 'table'")]
    assert tables == ["notes"]


def test_the_database_comes_from_sluice_db_by_default(
    db_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_DB", str(db_path))
    code, out, _ = run(capsys, "usage", "--by", "api", "--json")
    assert code == 0
    assert len(json.loads(out)) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["usage", "--by", "colour"], "cannot group by colour"),
        (["usage", "--since", "last week"], "not a time: 'last week'"),
        (["usage", "--json", "--csv"], "not allowed with argument"),
        (["quota", "--json", "--statusline"], "not allowed with argument"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _rate_limits(path: Path, credential: str, headers: dict[str, str], observed_at: datetime) -> None:
    db = state_db.connect(path)
    host = OPENAI if any(name.startswith("x-") for name in headers) else ANTHROPIC
    db["rate_limits"].insert_all(
        {
            "host": host,
            "credential": credential,
            "header": name,
            "value": value,
            "observed_at": observed_at.isoformat(),
            "call_id": f"{credential}-call",
        }
        for name, value in headers.items()
    )
    db.close()


def _epoch(moment: datetime) -> str:
    return str(int(moment.timestamp()))


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_quota_reads_every_family(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen = NOW - timedelta(minutes=3)
    _rate_limits(
        db_path,
        "key-1",
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": _rfc3339(NOW + timedelta(hours=1)),
            "anthropic-ratelimit-tokens-limit": "40000",
            "anthropic-ratelimit-tokens-remaining": "38000",
        },
        seen,
    )
    _rate_limits(
        db_path,
        "oauth-max",
        {
            "anthropic-ratelimit-unified-status": "allowed_warning",
            "anthropic-ratelimit-unified-representative-claim": "five_hour",
            "anthropic-ratelimit-unified-5h-utilization": "0.42",
            "anthropic-ratelimit-unified-5h-reset": _epoch(NOW + timedelta(hours=2, minutes=10, seconds=30)),
            "anthropic-ratelimit-unified-7d_opus-utilization": "0.9",
            "anthropic-ratelimit-unified-overage-status": "rejected",
            "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
            "anthropic-ratelimit-unified-upgrade-paths": "max_20x",
        },
        seen,
    )
    _rate_limits(
        db_path,
        "sk-1",
        {
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-tokens": "6m0s",
        },
        seen,
    )
    code, out, _ = run(capsys, "quota", "--db", str(db_path))
    assert code == 0
    for text in [
        f"{ANTHROPIC} · key-1 · seen 3m ago",
        "requests │ 49 / 50 left (2% used)",
        "tokens   │ 38,000 / 40,000 left (5% used)",
        f"{_rfc3339(NOW + timedelta(hours=1))[11:19]} UTC)",  # with its date when that is tomorrow
        f"{ANTHROPIC} · oauth-max",
        "allowed_warning · claim five_hour",
        "42% used",
        "in 2h10m",
        "7d_opus",
        "90% used",
        "rejected · disabled: org_level_disabled",
        "anthropic-ratelimit-unified-upgrade-paths │ max_20x",
        f"{OPENAI} · sk-1",
        "149,984 / 150,000 left (<1% used)",
    ]:
        assert text in out, text
    assert re.search(r"in (2m5\ds|3m) ", out)  # a 6m0s reset observed 3 minutes ago


def test_quota_json_is_the_normalized_structure(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen = datetime(2026, 11, 23, 3, 45, 50, tzinfo=UTC)
    _rate_limits(
        db_path,
        "sk-1",
        {"x-ratelimit-limit-requests": "60", "x-ratelimit-reset-requests": "1s", "x-custom-ratelimit": "7"},
        seen,
    )
    code, out, _ = run(capsys, "quota", "--db", str(db_path), "--json")
    assert code == 0
    assert json.loads(out) == [
        {
            "host": OPENAI,
            "credential": "sk-1",
            "call_id": "sk-1-call",
            "observed_at": "2026-11-23T03:45:50+00:00",
            "limits": [
                {
                    "provider": "openai",
                    "name": "requests",
                    "limit": 60,
                    "remaining": None,
                    "reset_at": "2026-11-23T03:45:51+00:00",
                    "observed_at": "2026-11-23T03:45:50+00:00",
                }
            ],
            "unified": None,
            "retry_at": None,
            "other": [
                {"header": "x-custom-ratelimit", "value": "7", "observed_at": "2026-11-23T03:45:50+00:00"}
            ],
        }
    ]


def test_quota_statusline(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _rate_limits(
        db_path,
        "oauth-max",
        {
            "anthropic-ratelimit-unified-status": "allowed",
            "anthropic-ratelimit-unified-reset": _epoch(NOW + timedelta(hours=2, minutes=10, seconds=30)),
            "anthropic-ratelimit-unified-5h-utilization": "0.42",
            "anthropic-ratelimit-unified-5h-reset": _epoch(NOW + timedelta(hours=2, minutes=10, seconds=30)),
            "anthropic-ratelimit-unified-7d-utilization": "0.13",
            "anthropic-ratelimit-unified-7d-reset": _epoch(NOW + timedelta(days=3)),
        },
        NOW,
    )
    code, out, _ = run(capsys, "quota", "--db", str(db_path), "--statusline")
    assert (code, out) == (0, "5h 42% · 7d 13% · resets 2h10m\n")
    _rate_limits(
        db_path, "sk-1", {"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "15"}, NOW
    )
    code, out, _ = run(capsys, "quota", "--db", str(db_path), "--statusline")
    assert out == "req 75% · 5h 42% · 7d 13% · worst of 2 keys\n"  # the worst window first, whichever key
    code, out, _ = run(capsys, "quota", "--db", str(db_path), "--statusline", "--each")
    assert out == "oauth-max: 5h 42% · 7d 13% · resets 2h10m | sk-1: req 75%\n"
    code, out, _ = run(capsys, "quota", "--db", str(db_path), "--statusline", "--credential", "sk-1")
    assert out == "req 75%\n"


def test_quota_shows_a_reading_of_the_usage_endpoint_as_such(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = state_db.connect(db_path)
    db["rate_limits"].insert_all(
        {
            "host": ANTHROPIC,
            "credential": "oauth file:login.json",
            "header": name,
            "value": value,
            "observed_at": NOW.isoformat(),
            "call_id": "oauth-usage",
        }
        for name, value in {
            "anthropic-ratelimit-unified-5h-utilization": "0.61",
            "anthropic-ratelimit-unified-5h-reset": (NOW + timedelta(hours=2, seconds=30)).isoformat(),
            "oauth-usage.extra_usage.is_enabled": "false",
        }.items()
    )
    db.close()

    code, out, _ = run(capsys, "quota", "--db", str(db_path))

    assert code == 0
    # The title wraps where the table's width puts it: a reset after midnight is shown with its date.
    title = " ".join(out.split())
    assert f"{ANTHROPIC} · oauth file:login.json · seen just now" in title
    assert "from the OAuth usage endpoint" in title
    assert re.search(r"5h\s+│ 61% used\s+│ in 2h \(", out), out
    assert "oauth-usage.extra_usage.is_enabled │ false" in out
    assert "subscription" not in out  # the endpoint gives no overall status: no line of question marks


def test_quota_live_is_not_for_a_status_line(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "quota", "--live", "--statusline", "--config", "sluice.toml")
    assert (code, out) == (1, "")
    assert "too often for a status line" in err and "sluice_quota_poll" in err


def test_quota_live_names_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text('[[upstreams]]\nhost = "api.anthropic.com"\nprovider = "anthropic"\nkyes = []\n')
    code, _, err = run(capsys, "quota", "--live", "--config", str(config), "--db", str(tmp_path / "x.db"))
    assert code == 1
    assert "kyes" in err
    assert not (tmp_path / "x.db").exists()


def test_a_pool_statusline_is_one_short_line_worst_first(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for index, (five_hours, seven_days) in enumerate([(0.12, 0.40), (0.97, 0.21), (0.55, 0.33)]):
        _rate_limits(
            db_path,
            f"keys[{index}] env:ANTHROPIC_KEY_{index}",
            {
                "anthropic-ratelimit-unified-status": "allowed",
                "anthropic-ratelimit-unified-5h-utilization": str(five_hours),
                "anthropic-ratelimit-unified-5h-reset": _epoch(
                    NOW + timedelta(hours=1, minutes=10 + index, seconds=30)
                ),
                "anthropic-ratelimit-unified-7d-utilization": str(seven_days),
                "anthropic-ratelimit-unified-7d-reset": _epoch(NOW + timedelta(days=3)),
                "anthropic-ratelimit-unified-reset": _epoch(
                    NOW + timedelta(hours=1, minutes=10 + index, seconds=30)
                ),
            },
            NOW,
        )
    code, out, _ = run(capsys, "quota", "--db", str(db_path), "--statusline")
    assert (code, out) == (0, "5h 97% · 7d 40% · resets 1h11m · worst of 3 keys\n")
    assert len(out) < 60


def test_quota_with_nothing_recorded(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "quota", "--db", str(db_path)) == (
        0,
        f"No rate-limit headers recorded in {db_path} yet.\n",
        "",
    )
    assert run(capsys, "quota", "--db", str(db_path), "--json")[1] == "[]\n"
    assert run(capsys, "quota", "--db", str(db_path), "--statusline")[1] == "no rate limits seen\n"


def test_the_sluice_console_script(db_path: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "sluice"
    assert script.exists(), "the sluice console script is not installed: pip install -e ."
    done = subprocess.run(
        [str(script), "usage", "--db", str(db_path), "--by", "client", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert [(row["client"], row["calls"]) for row in json.loads(done.stdout)] == [("alice", 3), ("bob", 2)]
    missing = subprocess.run(
        [str(script), "quota", "--db", str(tmp_path / "missing.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 1
    assert "no database at" in missing.stderr


def test_credentials_lists_states_and_resets(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from state.pool import CredentialEntry, CredentialPool

    pool = CredentialPool(state_db.connect(db_path))
    entries = [
        CredentialEntry("keys[0] env:K1", "sha256:aaaa", "key"),
        CredentialEntry("keys[1] env:K2", "sha256:bbbb"),
    ]
    pool.sync_config("api.anthropic.com", entries)
    pool.report("api.anthropic.com", "sha256:aaaa", 401, {}, "invalid x-api-key")
    pool.report("api.anthropic.com", "sha256:bbbb", 429, {"retry-after": "120"}, "rate limited")

    assert main(["credentials", "--db", str(db_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(c["label"], c["state"]) for c in listed] == [
        ("keys[0] env:K1", "disabled"),
        ("keys[1] env:K2", "cooling"),
    ]
    assert "invalid x-api-key" in listed[0]["reason"]
    assert listed[1]["cooling_until"] is not None

    assert main(["credentials", "--db", str(db_path)]) == 0
    table = capsys.readouterr().out
    assert "disabled" in table and "keys[1] env:K2" in table

    assert main(["credentials", "--db", str(db_path), "--reset", "api.anthropic.com", "keys[0] env:K1"]) == 0
    assert "active again" in capsys.readouterr().out
    assert main(["credentials", "--db", str(db_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "active"
    assert main(["credentials", "--db", str(db_path), "--reset", "api.anthropic.com", "nope"]) == 1


def test_clients_shows_budgets(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from state.budgets import BudgetLedger

    ledger = BudgetLedger(state_db.connect(db_path))
    ledger.sync_budgets({"alice": (20.0, "day"), "bob": (5.0, "total")})
    assert ledger.admit("x1", "alice", 1.5, 20.0, "day").admitted
    assert main(["clients", "--db", str(db_path), "--json"]) == 0
    listed = {c["client"]: c for c in json.loads(capsys.readouterr().out)}
    assert listed["alice"]["reserved_usd"] == 1.5 and listed["alice"]["remaining_usd"] == 18.5
    assert listed["bob"]["resets_at"] is None
    assert main(["clients", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert "$20.00 /day" in out and "never" in out


def test_teams_shows_team_budgets_with_their_members(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from state.budgets import BudgetLedger, TeamBudget

    ledger = BudgetLedger(state_db.connect(db_path))
    assert main(["teams", "--db", str(db_path)]) == 0
    assert "no team budgets configured" in capsys.readouterr().out
    ledger.sync_budgets({}, {"platform": (100.0, "month", ["alice", "ci"])})
    assert ledger.admit("x1", "ci", 2.5, None, "day", team=TeamBudget("platform", 100.0, "month")).admitted
    assert main(["teams", "--db", str(db_path), "--json"]) == 0
    [team] = json.loads(capsys.readouterr().out)
    assert (team["team"], team["members"], team["reserved_usd"], team["remaining_usd"]) == (
        "platform",
        ["alice", "ci"],
        2.5,
        97.5,
    )
    assert main(["teams", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert "platform" in out and "alice, ci" in out and "$100.00 /month" in out and "$97.5000" in out


# ── seeing it: sessions, 5-hour blocks, the HTML page, Claude Code's status line ──


@pytest.fixture
def sessions_db(tmp_path: Path) -> Path:
    path = tmp_path / "sessions.db"
    db = state_db.connect(path)
    start = datetime(2026, 11, 20, 9, 12, tzinfo=UTC)
    db["calls"].insert_all(
        [
            _call("s1-a", start, session_id="sess-1", input_tokens=100, output_tokens=10, cost_usd=0.25),
            _call("s1-b", start + timedelta(hours=2), session_id="sess-1", output_tokens=20, cost_usd=0.5),
            _call(
                "s2-a", start + timedelta(hours=6), session_id="sess-2", model="claude-opus-4-1", cost_usd=1.0
            ),
            _call("none", start + timedelta(hours=6, minutes=5), client="bob", cost_usd=0.125),
        ]
    )
    db.close()
    return path


def test_usage_by_session(sessions_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "usage", "--db", str(sessions_db), "--by", "session", "--json")
    assert (code, err) == (0, "")
    rows = json.loads(out)
    assert [
        (r["session"], r["calls"], r["cost_usd"], r["first_call_at"], r["last_call_at"]) for r in rows
    ] == [
        ("sess-1", 2, 0.75, "2026-11-20T09:12:00+00:00", "2026-11-20T11:12:00+00:00"),
        ("sess-2", 1, 1.0, "2026-11-20T15:12:00+00:00", "2026-11-20T15:12:00+00:00"),
        (None, 1, 0.125, "2026-11-20T15:17:00+00:00", "2026-11-20T15:17:00+00:00"),
    ]
    code, out, _ = run(capsys, "usage", "--db", str(sessions_db), "--by", "session")
    lines = out.splitlines()
    assert any(
        "sess-1" in line
        and "2026-11-20 09:12 UTC" in line
        and "2026-11-20 11:12 UTC" in line
        and "$0.7500" in line
        for line in lines
    )
    assert any("(none)" in line and "$0.1250" in line for line in lines)


def test_usage_by_block(sessions_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "usage", "--db", str(sessions_db), "--by", "block,model", "--csv")
    assert (code, err) == (0, "")
    assert out.splitlines()[0].startswith("block,model,first_call_at,last_call_at,calls,")
    rows = [line.split(",")[:5] for line in out.splitlines()[1:]]
    assert rows == [
        [
            "2026-11-20T09:00Z",
            "claude-sonnet-4-5",
            "2026-11-20T09:12:00+00:00",
            "2026-11-20T11:12:00+00:00",
            "2",
        ],
        [
            "2026-11-20T15:00Z",
            "claude-opus-4-1",
            "2026-11-20T15:12:00+00:00",
            "2026-11-20T15:12:00+00:00",
            "1",
        ],
        [
            "2026-11-20T15:00Z",
            "claude-sonnet-4-5",
            "2026-11-20T15:17:00+00:00",
            "2026-11-20T15:17:00+00:00",
            "1",
        ],
    ]
    code, out, _ = run(capsys, "usage", "--db", str(sessions_db), "--by", "block")
    assert "5h block (UTC)" in out and "2026-11-20T15:00Z" in out


def test_usage_html_is_one_self_contained_page(
    sessions_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "report.html"
    code, out, err = run(capsys, "usage", "--db", str(sessions_db), "--html", str(page))
    assert (code, out, err) == (0, f"wrote {page}\n", "")
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") == 4
    for name in ("claude-sonnet-4-5", "claude-opus-4-1", "alice", "bob", "$1.88"):
        assert name in html
    lowered = html.lower()
    for fetches in ("<script", "src=", "href=", "@import", "url(", "http://", "https://"):
        assert fetches not in lowered, fetches
    code, _, err = run(
        capsys, "usage", "--db", str(sessions_db), "--html", str(tmp_path / "no" / "dir" / "r.html")
    )
    assert code == 1 and err.startswith("sluice: error: cannot write")


def test_html_and_json_are_exclusive(sessions_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["usage", "--db", str(sessions_db), "--html", "x.html", "--json"])
    assert exited.value.code == 2


def test_statusline_ignores_what_claude_code_pipes_in(db_path: Path) -> None:
    """Claude Code runs the statusLine command with a JSON description of the session on stdin."""
    script = Path(sys.executable).parent / "sluice"
    session = json.dumps(
        {"session_id": "abc", "model": {"id": "claude-opus-4-1"}, "workspace": {"current_dir": "/"}}
    )
    for stdin in (session, "", "x" * 200_000):
        done = subprocess.run(
            [str(script), "quota", "--db", str(db_path), "--statusline"],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "no rate limits seen\n", "")


HOSTILE = "claude\x1b]0;owned\x07\x1b[2J\u202eevil\r[bold red]x[/]"


def test_recorded_values_cannot_drive_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sluice.db"
    state_db.connect(path)["calls"].insert(_call("h", NOW, model=HOSTILE, client="=cmd|' /C calc'!A0"))
    assert main(["usage", "--db", str(path), "--by", "model,client"]) == 0
    table = capsys.readouterr().out
    assert "\x1b" not in table and "\x07" not in table and "\u202e" not in table and "\r" not in table
    assert (
        "claude\\x1b]0;owned\\x07\\x1b[2J\\u202eevil\\r[bold red]x[/]" in table
    )  # shown, escaped, no markup
    assert main(["usage", "--db", str(path), "--by", "model,client", "--csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].startswith("claude\\x1b]0;owned\\x07")
    assert ",'=cmd|' /C calc'!A0," in rows[1]  # never read as a formula
    assert main(["usage", "--db", str(path), "--by", "model", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["model"] == HOSTILE  # JSON stays exact


def test_credential_reasons_and_rate_limit_values_are_shown_escaped(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from state.pool import CredentialEntry, CredentialPool

    pool = CredentialPool(state_db.connect(db_path))
    pool.sync_config("api.anthropic.com", [CredentialEntry("keys[0] env:K1", "sha256:aaaa", "key")])
    pool.report("api.anthropic.com", "sha256:aaaa", 401, {}, "invalid \x1b[31mkey\x1b[0m")
    assert main(["credentials", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "invalid \\x1b[31mkey" in out
    _rate_limits(db_path, "key-9", {"x-ratelimit-limit-requests\x1b[2J": "5\x1b]0;t\x07"}, NOW)
    assert main(["quota", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out


def test_a_model_without_a_price_is_shown_unpriced_not_zero_dollars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "unpriced.db"
    state_db.connect(path)["calls"].insert_all(
        [
            _call("a", NOW, model="claude-new", input_tokens=10, output_tokens=5, cost_note="no price known"),
            _call("b", NOW, model="claude-new", status=529, error="overloaded_error: busy"),
        ]
    )
    code, out, _ = run(capsys, "usage", "--db", str(path), "--by", "model")
    assert code == 0
    line = next(line for line in out.splitlines() if "claude-new" in line)
    assert [cell.strip() for cell in line.split("│")[-4:-1]] == [
        "unpriced",
        "1",
        "1",
    ]  # cost, unpriced, errors
    assert "$0.0000" not in out


def test_a_minted_token_is_not_refreshed_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text(
        '[[upstreams]]\nhost = "us-east5-aiplatform.googleapis.com"\nprovider = "vertex"\n'
        'oauth = { mint = "google", credentials = "default" }\n'
    )
    refresh = ["--refresh", "us-east5-aiplatform.googleapis.com", "oauth default"]
    code = main(["credentials", "--db", str(tmp_path / "sluice.db"), "--config", str(config), *refresh])
    assert code != 0
    assert "minted by the proxy itself" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["usage", "--db"], ["migrate", "--from", "{db}", "--to"]])
def test_a_postgresql_url_that_cannot_be_parsed_is_refused_without_its_password(
    db_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    url = "postgresql://sluice:s3cret@[::1/sluice"  # libpq's error quotes the whole URL
    code, out, err = run(capsys, *[part.format(db=db_path) for part in command], url)
    assert code == 1 and out == ""
    assert err.startswith("sluice: error: cannot open postgresql://…: ") and "s3cret" not in err
