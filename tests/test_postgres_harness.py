"""The real PostgreSQL server the suite starts (tests/postgres.py) and its fixtures (tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.postgres import (
    HOST,
    PostgresServer,
    child_pids,
    find_binaries,
    start_time_of,
    still_alive,
    sweep_orphans,
    unavailable_reason,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

StartPostgres = Callable[[], PostgresServer]


def _server_processes(server: PostgresServer) -> list[tuple[int, str]]:
    assert server.pid is not None, "the server is not running"
    return _processes_of(server.pid)


def _processes_of(postmaster: int) -> list[tuple[int, str]]:
    """The postmaster and its children, each with its start time (which tells it from a later namesake);
    a child that exits while we look (the backend of a connection just closed) is left out."""
    processes = []
    for pid in [postmaster, *child_pids(postmaster)]:
        started = start_time_of(pid)
        if started is not None:
            processes.append((pid, started))
    return processes


def _still_running(processes: list[tuple[int, str]]) -> list[int]:
    return [pid for pid, started in processes if still_alive(pid, started)]


def _uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem user ids."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(uid) for uid in line.split()[1:]]
    raise AssertionError(f"no Uid line for process {pid}")


def _with_password(url: str, password: str | None) -> str:
    parts = urlsplit(url)
    user = parts.username or ""
    credentials = user if password is None else f"{user}:{password}"
    return urlunsplit(parts._replace(netloc=f"{credentials}@{parts.hostname}:{parts.port}"))


def test_a_database_url_connects_over_loopback_with_the_login_roles_password(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    parts = urlsplit(postgres_url)
    assert (parts.scheme, parts.hostname, parts.port) == ("postgresql", HOST, postgres_server.port)
    assert (parts.username, parts.password) == (postgres_server.user, postgres_server.password)
    with psycopg.connect(postgres_url) as conn:
        user, address, port = (
            conn.execute("select current_user, host(inet_server_addr()), inet_server_port()").fetchone() or ()
        )
        conn.execute("create table calls (id integer primary key, model text)")
        conn.execute("insert into calls values (1, 'claude-haiku-4-5')")
        assert conn.execute("select model from calls").fetchall() == [("claude-haiku-4-5",)]
    assert (user, address, port) == (postgres_server.user, HOST, postgres_server.port)


def test_a_wrong_or_missing_password_is_refused(postgres_server: PostgresServer, postgres_url: str) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(_with_password(postgres_url, "not-the-password"), connect_timeout=10).close()
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(_with_password(postgres_url, None), connect_timeout=10).close()


def test_the_password_is_stored_as_a_scram_verifier_and_never_logged(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    since = postgres_server.log_size()
    psycopg.connect(postgres_url).close()
    with postgres_server.admin_connect() as conn:
        [(stored,)] = conn.execute(
            "select rolpassword from pg_authid where rolname = %s", [postgres_server.user]
        ).fetchall()
    assert stored.startswith("SCRAM-SHA-256$")
    assert postgres_server.password not in stored
    assert "password authentication failed" not in postgres_server.log_text(since)  # none refused yet
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(_with_password(postgres_url, "wrong"), connect_timeout=10).close()
    log = postgres_server.log_text()
    assert "password authentication failed" in log
    assert postgres_server.password not in log


def test_each_database_is_a_fresh_one_that_others_do_not_see(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    other_url = postgres_server.create_database()
    assert urlsplit(other_url).path != urlsplit(postgres_url).path
    with psycopg.connect(postgres_url) as conn:
        conn.execute("create table calls (id integer)")
        conn.execute("insert into calls values (1)")
    with psycopg.connect(other_url) as conn:
        assert conn.execute("select to_regclass('calls')").fetchone() == (None,)
        conn.execute("create table calls (id integer)")
        assert conn.execute("select count(*) from calls").fetchone() == (0,)
    postgres_server.drop_database(other_url)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(other_url, connect_timeout=10).close()


def test_the_server_processes_do_not_run_as_root(postgres_server: PostgresServer, postgres_url: str) -> None:
    expected = pwd.getpwnam(postgres_server.os_user).pw_uid
    with psycopg.connect(postgres_url) as conn:
        [(backend,)] = conn.execute("select pg_backend_pid()").fetchall()
        processes = [pid for pid, _ in _server_processes(postgres_server)]
        assert backend in processes
        assert len(processes) >= 3  # the postmaster, its auxiliary processes and this connection's backend
        uids = {}
        for pid in processes:
            with contextlib.suppress(OSError):  # it exited since
                uids[pid] = _uids(pid)
        assert backend in uids
        assert uids == {pid: [expected] * 4 for pid in uids}
    assert expected != 0
    assert os.stat(postgres_server.data_dir).st_uid == expected
    if os.geteuid() == 0:
        assert postgres_server.os_user == "nobody"


def test_the_server_allows_many_connections_and_does_not_sync(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    with postgres_server.admin_connect() as conn:
        settings = dict(
            conn.execute(
                "select name, setting from pg_settings where name in "
                "('max_connections', 'fsync', 'listen_addresses', 'password_encryption')"
            ).fetchall()
        )
    assert int(settings.pop("max_connections")) >= 200
    assert settings == {"fsync": "off", "listen_addresses": HOST, "password_encryption": "scram-sha-256"}


def test_stop_refuses_connections_and_start_brings_the_same_data_back_on_the_same_port(
    start_postgres: StartPostgres,
) -> None:
    server = start_postgres()
    port, url = server.port, server.create_database()
    with psycopg.connect(url) as conn:
        conn.execute("create table calls (id integer)")
        conn.execute("insert into calls values (7)")
    held = psycopg.connect(url)  # a pool's idle connection: stop() must not wait for it
    processes = _server_processes(server)
    since = server.log_size()

    server.stop()

    assert "received fast shutdown request" in server.log_text(since)
    assert "immediate shutdown" not in server.log_text(since)  # it was not forced
    assert not server.running
    assert _still_running(processes) == []
    with pytest.raises(psycopg.OperationalError):
        held.execute("select 1")
    held.close()
    with pytest.raises(psycopg.OperationalError, match="refused"):
        psycopg.connect(url, connect_timeout=10).close()

    server.start()

    assert server.running and server.port == port
    with psycopg.connect(url) as conn:
        assert conn.execute("select id from calls").fetchall() == [(7,)]


def test_close_leaves_no_process_and_no_directory(start_postgres: StartPostgres) -> None:
    server = start_postgres()
    url = server.create_database()
    held = psycopg.connect(url)
    processes = _server_processes(server)
    directory = server.directory
    assert directory.is_dir()

    server.close()

    assert _still_running(processes) == []
    assert not directory.exists()
    with pytest.raises(psycopg.OperationalError):
        held.execute("select 1")
    held.close()
    server.close()  # twice is harmless


def test_a_server_whose_session_was_killed_is_stopped_and_removed_by_the_next_one(
    postgres_available: None,
) -> None:
    parent = Path(tempfile.mkdtemp(prefix="sluice-pg-sweep-"))
    parent.chmod(0o711)  # the server's user must reach its directory
    processes: list[tuple[int, str]] = []
    try:
        session = subprocess.Popen(
            [sys.executable, "-c", ORPHANING_SESSION],
            env={**os.environ, "TMPDIR": str(parent), "PYTHONPATH": str(REPO_ROOT)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert session.stdout is not None
        directory, pid = session.stdout.readline().split()
        processes = _processes_of(int(pid))
        session.kill()  # no fixture teardown, no atexit: the postmaster is left behind
        session.wait(30)
        assert int(pid) in _still_running(processes)  # the postmaster outlived its session

        sweep_orphans(parent)

        assert _still_running(processes) == []
        assert not Path(directory).exists()
    finally:
        for leftover in _still_running(processes):
            os.kill(leftover, signal.SIGKILL)
        shutil.rmtree(parent)


# A test session that starts a server, says where, and waits to be killed.
ORPHANING_SESSION = """
import sys
from tests.postgres import PostgresServer
server = PostgresServer()
print(server.directory, server.pid, flush=True)
sys.stdin.read()
"""


def test_binaries_off_the_path_are_found_in_the_newest_versioned_directory(tmp_path: Path) -> None:
    root = tmp_path / "postgresql"
    for version in ("9.6", "16", "13"):
        _fake_install(root / version / "bin")
    (root / "17" / "bin").mkdir(parents=True)  # a leftover without the server
    empty_path = str(tmp_path / "nothing-here")

    assert find_binaries(search_path=empty_path, versioned_root=root) == root / "16" / "bin"
    assert find_binaries(search_path=empty_path, versioned_root=tmp_path / "absent") is None


def test_binaries_on_the_path_win_and_their_links_are_followed(tmp_path: Path) -> None:
    root = tmp_path / "postgresql"
    _fake_install(root / "16" / "bin")
    _fake_install(tmp_path / "elsewhere" / "bin")
    linked = tmp_path / "local-bin"
    linked.mkdir()
    (linked / "initdb").symlink_to(tmp_path / "elsewhere" / "bin" / "initdb")

    assert find_binaries(search_path=str(linked), versioned_root=root) == tmp_path / "elsewhere" / "bin"


def test_without_binaries_the_reason_says_how_to_install_them(tmp_path: Path) -> None:
    reason = unavailable_reason(search_path=str(tmp_path), versioned_root=tmp_path / "absent")
    assert reason is not None and "apt-get install postgresql" in reason
    _fake_install(tmp_path / "16" / "bin")
    found = unavailable_reason(search_path=str(tmp_path), versioned_root=tmp_path)
    assert found is None or "root" in found  # root without a `nobody` user is the only other obstacle


def _fake_install(bindir: Path) -> None:
    """Empty executables named like the server's: find_binaries only looks, never runs them."""
    bindir.mkdir(parents=True)
    for program in ("initdb", "postgres"):
        (bindir / program).touch(mode=0o755)
