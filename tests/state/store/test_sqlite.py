from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from state.store.sqlite import immediate, open_connection, secrets_path_for


def test_the_secrets_file_sits_beside_the_main_database() -> None:
    assert secrets_path_for("/var/lib/sluice/sluice.db") == Path("/var/lib/sluice/sluice.secrets.db")
    assert secrets_path_for("~/usage.db") == Path("~/usage.secrets.db").expanduser()


def test_every_connection_shares_the_settings_other_processes_rely_on(tmp_path: Path) -> None:
    db = open_connection(tmp_path / "sluice.db", busy_timeout_ms=1234)
    assert db.execute("pragma journal_mode").fetchone() == ("wal",)
    assert db.execute("pragma busy_timeout").fetchone() == (1234,)
    assert db.execute("pragma synchronous").fetchone() == (1,)  # normal
    db.close()


def test_an_immediate_transaction_waits_for_the_lock_instead_of_failing_on_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "sluice.db"
    first, second = open_connection(path, busy_timeout_ms=50), open_connection(path, busy_timeout_ms=50)
    first.execute("create table t (x)")
    with immediate(first.conn):
        first.execute("insert into t values (1)")
        with pytest.raises(sqlite3.OperationalError, match="locked"), immediate(second.conn):
            pass  # the write lock is taken up front: refused at `begin`, with nothing half done
        assert not second.conn.in_transaction
    assert second.execute("select x from t").fetchall() == [(1,)]
