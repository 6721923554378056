from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from addons.core import SluiceCore
from addons.credentials import Credentials
from rules.secrets import fingerprint
from state import db as sluice_db
from state.pool import CredentialEntry, CredentialPool

HOST = "api.anthropic.com"
ENTRY = CredentialEntry("keys[0] env:ANTHROPIC_KEY_1", fingerprint("sk-ant-api03-" + "a" * 40))


def test_history_writes_held_up_by_another_process_leave_the_worker_threads_free(tmp_path: Path) -> None:
    """The pool's writes (a conversation's pin, new limits, history) wait for the database while another
    proxy writes to it. They must not take every worker thread meanwhile: the budget's admission, the OAuth
    store and the meter's decoding run on those threads, and every request would wait behind the history."""
    db_path = tmp_path / "sluice.db"
    credentials = Credentials(SluiceCore())
    pool = CredentialPool(sluice_db.connect(db_path, busy_timeout_ms=12_000))
    pool.sync_config(HOST, [ENTRY])
    credentials.pool = pool
    elsewhere = sqlite3.connect(db_path, isolation_level=None)
    elsewhere.execute("begin immediate")  # another proxy on the same database, writing

    async def run() -> float:
        try:
            for number in range(40):  # forty new conversations at once
                credentials._in_background(pool.pin, HOST, f"conversation-{number}", ENTRY)
            deadline = time.monotonic() + 10
            while not pool._lock.locked():  # the first write is in, waiting for the database
                assert time.monotonic() < deadline, "no write started"
                await asyncio.sleep(0.001)
            started = time.monotonic()
            try:
                await asyncio.wait_for(asyncio.to_thread(lambda: None), timeout=6)  # other work off the loop
            except TimeoutError:
                return float("inf")
            return time.monotonic() - started
        finally:
            elsewhere.execute("rollback")
            await asyncio.gather(*credentials._background)

    try:
        waited = asyncio.run(run())
    finally:
        elsewhere.close()
    assert waited < 5  # the writes wait up to 12 s each
    assert sluice_db.connect(db_path).execute("select count(*) from credential_affinity").fetchone()[0] == 40
