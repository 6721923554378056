"""The database in trouble while calls flow: locked by another process, the disk full, the proxy killed.

No request may fail because of the database: rows wait in the writer's memory and land when it recovers,
exactly once each, with a loud warning in the log while they wait.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Proxy, anthropic_client
from tests.fake_provider import FakeProvider
from tests.faults.load import USAGE, Load, read_rows
from tests.faults.support import MESSAGE, assert_no_tracebacks, wait_until

pytestmark = pytest.mark.e2e

StartProxy = Callable[..., Proxy]

# Holds an exclusive lock on the database until told to let go (a line on stdin) or `cap` seconds pass.
LOCKER = """
import sqlite3, sys, threading
path, cap = sys.argv[1], float(sys.argv[2])
conn = sqlite3.connect(path, timeout=30, isolation_level=None)
conn.execute("begin exclusive")
print("locked", flush=True)
released = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), released.set()), daemon=True).start()
released.wait(cap)
conn.execute("commit")
conn.close()
print("released", flush=True)
"""


@contextlib.contextmanager
def exclusive_lock(db_path: Path, cap: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holding `BEGIN EXCLUSIVE` on the database; released when the block ends."""
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db_path), str(cap)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        yield locker
    finally:
        with contextlib.suppress(OSError, ValueError):
            assert locker.stdin is not None
            locker.stdin.write("go\n")
            locker.stdin.flush()
        try:
            locker.wait(cap + 10)
        except subprocess.TimeoutExpired:
            locker.kill()
            locker.wait()


def calls_while(proxy: Proxy, fake: FakeProvider, seconds: float, clients: int = 4) -> list[str]:
    """Concurrent SDK calls for `seconds` (at most 1,000 per client); each must succeed. Their markers."""
    fake.set_default(usage=USAGE)
    done: list[str] = []
    failures: list[BaseException] = []
    end = time.monotonic() + seconds
    lock = threading.Lock()

    def client(n: int) -> None:
        with anthropic_client(proxy) as claude:
            for i in range(1000):
                if time.monotonic() >= end:
                    return
                marker = f"db-fault-{n}-{i}"
                try:
                    claude.messages.create(**MESSAGE, extra_headers={"x-claude-code-session-id": marker})
                except Exception as e:  # reported below: no request may fail
                    failures.append(e)
                    return
                with lock:
                    done.append(marker)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    assert not failures, failures[:3]
    return done


def assert_rows_are(db_path: Path, markers: list[str], *, before: int) -> None:
    rows = read_rows(db_path)
    per_marker = Counter(row["session_id"] for row in rows[before:])
    assert len(rows) == before + len(markers)
    assert per_marker == Counter(markers)  # every call, once
    assert all(row["status"] == 200 and row["error"] is None for row in rows[before:])


# Locked by another process.


@pytest.mark.parametrize(
    "hold",
    [
        pytest.param(3.0, id="3s-within-busy-timeout"),
        # Past the writer's 10 s busy timeout: its transaction fails, the rows wait in memory and are retried.
        pytest.param(13.0, id="13s-past-busy-timeout", marks=pytest.mark.soak),
    ],
)
def test_database_locked_by_another_process(fake: FakeProvider, start_proxy: StartProxy, hold: float) -> None:
    proxy = start_proxy()
    assert proxy.db_path is not None
    warm = calls_while(proxy, fake, 0.3, clients=1)
    before = len(proxy.wait_for_rows(len(warm)))

    with exclusive_lock(proxy.db_path, cap=hold + 30):
        during = calls_while(proxy, fake, hold)  # every one of them must succeed
        if hold > 10:
            # Held until the writer has given up waiting (its busy timeout), however fast the calls went.
            proxy.wait_for_log("database write failed", timeout=30)
        rows_while_locked = count_rows(proxy.db_path)
    assert during, "no call went through while the database was locked"
    assert rows_while_locked == before  # the lock really held the writer off

    assert wait_until(lambda: len(read_rows(proxy.db_path)) >= before + len(during), timeout=30)
    assert_rows_are(proxy.db_path, during, before=before)
    if hold > 10:
        assert "database write failed" in proxy.log_text()
    proxy.stop()
    assert_no_tracebacks(proxy)


def count_rows(db_path: Path) -> int:
    """Rows a reader sees while another process holds the write lock (WAL: readers are not blocked)."""
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("select count(*) from calls").fetchone()[0])
    finally:
        conn.close()


# The disk full.


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` for the block (needs root); skips the test when not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up ({mounted.stderr.strip()}); run as root")
    try:
        yield where
    finally:
        for attempt in range(50):
            if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.1 * (attempt + 1))
        else:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full (ENOSPC); returns it."""
    filler = directory / "filler"
    block = b"\0" * 4096
    with filler.open("wb", buffering=0) as out:
        for _ in range(1 << 20):  # bounded: 4 GiB
            try:
                out.write(block)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    os.sync()
    return filler


def test_disk_full_keeps_rows_in_memory_and_writes_them_when_space_returns(
    fake: FakeProvider, start_proxy: StartProxy, tmp_path: Path, soak: bool
) -> None:
    # Room, once freed, for every row the soak's longer run holds (~2,000 at 2 KB and more in the WAL).
    with small_tmpfs(tmp_path / "small-disk", "16m" if soak else "4m") as disk:
        db_path = disk / "sluice.db"
        proxy = start_proxy(set_db=False, extra_args=["--set", f"sluice_db={db_path}"])
        try:  # the proxy must be gone before the disk is unmounted
            warm = calls_while(proxy, fake, 0.5, clients=1)
            assert wait_until(lambda: len(read_rows(db_path)) == len(warm), timeout=10)
            filler = fill(disk)

            full = calls_while(proxy, fake, 8.0 if soak else 2.0)  # every one of them must succeed
            warning = proxy.wait_for_log("database write failed", timeout=15)
            assert "records held in memory" in warning
            assert "disk is full" in warning
            assert count_rows(db_path) == len(warm)  # nothing could be written meanwhile

            filler.unlink()
            assert wait_until(lambda: len(read_rows(db_path)) >= len(warm) + len(full), timeout=30)
            assert_rows_are(db_path, full, before=len(warm))
            proxy.stop()
            assert_no_tracebacks(proxy)
        finally:
            proxy.stop()


# kill -9 in the middle of a load.


def test_kill_9_mid_load_loses_at_most_the_last_moment(
    fake: FakeProvider, start_proxy: StartProxy, soak: bool
) -> None:
    total, clients = (4000, 50) if soak else (600, 20)
    proxy = start_proxy()
    load = Load(proxy, fake, total=total, clients=clients, faults=False)
    runner = threading.Thread(target=load.run, args=(300,), daemon=True)
    runner.start()
    assert wait_until(lambda: load.done >= total // 2, timeout=120)
    proxy.process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    proxy.process.wait(10)
    load.stop.set()
    runner.join(60)

    completed = {m: r for m, r in load.results.items() if r.ending == "answer" and r.finished_at <= killed_at}
    rows = read_rows(proxy.db_path)
    recorded = Counter(row["session_id"] for row in rows)
    assert max(recorded.values()) == 1
    lost = sorted(killed_at - completed[m].finished_at for m in completed if m not in recorded)
    # Wider: calls the upstream had answered in full, whether or not the answer had reached the client.
    answered = {load.marker_of(r) for r in fake.requests if r.response and r.response.outcome == "complete"}
    print(
        f"\nkill -9 after {len(completed)} completed calls ({clients} clients): {len(lost)} without a row"
        + (f", completed {lost[0] * 1000:.0f}-{lost[-1] * 1000:.0f} ms before the kill" if lost else "")
        + f"; {len(answered - set(recorded))} of {len(answered)} calls the upstream had finished have no row"
    )
    # What can be lost is what was queued and not yet committed: calls that ended in the last moment
    # before the kill, at most about one per client.
    assert len(lost) <= clients
    # Rows of calls that had not completed for the client are fine (the upstream answered); the database
    # is sound, and a new proxy on it records again.
    check = sqlite3.connect(str(proxy.db_path))
    try:
        assert check.execute("pragma integrity_check").fetchone() == ("ok",)
    finally:
        check.close()
    again = start_proxy(proxy.workdir)
    fake.choose = None
    fake.next(usage=USAGE)
    with anthropic_client(again) as client:
        client.messages.create(**MESSAGE)
    assert wait_until(lambda: len(read_rows(again.db_path)) == len(rows) + 1, timeout=10)
    again.stop()
    assert_no_tracebacks(again)


# The database file deleted under a running proxy.


def test_a_database_deleted_under_the_proxy_is_created_again_loudly(
    fake: FakeProvider, start_proxy: StartProxy
) -> None:
    proxy = start_proxy()
    assert proxy.db_path is not None
    with anthropic_client(proxy) as client:
        client.messages.create(**MESSAGE)
        proxy.wait_for_rows(1)
        for path in proxy.db_path.parent.glob(proxy.db_path.name + "*"):
            path.unlink()
        fake.next(usage=USAGE)
        client.messages.create(**MESSAGE)
    proxy.wait_for_log("was deleted or replaced while sluice had it open; creating it again", timeout=10)

    def rows_in_new_file() -> int:
        try:  # the writer may be creating it this instant: tables not there yet
            return len(read_rows(proxy.db_path)) if proxy.db_path.exists() else 0
        except sqlite3.OperationalError:
            return 0

    assert wait_until(lambda: rows_in_new_file() == 1, timeout=10)
    [row] = read_rows(proxy.db_path)
    assert row["input_tokens"] == USAGE.input_tokens
    proxy.stop()
    assert_no_tracebacks(proxy)
