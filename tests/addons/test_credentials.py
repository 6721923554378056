from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from mitmproxy import exceptions

from addons.core import SluiceCore
from addons.credentials import Credentials
from rules.secrets import fingerprint
from state import store as sluice_db
from state.pool import CredentialEntry, CredentialPool
from tests import fake_vertex
from tests.addons.proxy import configured
from tests.fake_vertex import FakeGoogle

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


# Access tokens minted in the proxy: the key file is checked when the config is read.

ENV = "SLUICE_TEST_ALICE"


def key_file(tmp_path: Path, mode: int, text: str | None = None) -> Path:
    path = FakeGoogle(lifetime_s=60).write_key_file(
        tmp_path / "sa.json", "https://oauth2.googleapis.com/token", text
    )
    path.chmod(mode)
    return path


def start(tmp_path: Path, credentials: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "client-key-of-alice")
    with configured(
        tmp_path, lambda core: [Credentials(core)], fake_vertex.config("alice", ENV, credentials)
    ):
        pass


def test_a_key_file_others_may_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = key_file(tmp_path, 0o644)
    with pytest.raises(exceptions.OptionsError, match=r"readable by others \(mode 644\); chmod 600"):
        start(tmp_path, f"file:{path}", monkeypatch)


def test_a_key_file_google_auth_cannot_use_is_refused_without_quoting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = key_file(tmp_path, 0o600, '{"type": "service_account", "private_key": "s3cret-garbage"}')
    with pytest.raises(exceptions.OptionsError) as refused:
        start(tmp_path, f"file:{path}", monkeypatch)
    assert "google-auth cannot use it" in str(refused.value) and "s3cret" not in str(refused.value)


def test_a_key_written_inline_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(exceptions.OptionsError, match="file:PATH or env:NAME, or say `default`"):
        start(tmp_path, "just-a-literal", monkeypatch)


def test_a_private_key_file_and_the_platforms_own_credentials_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start(tmp_path, f"file:{key_file(tmp_path, 0o600)}", monkeypatch)
    start(tmp_path, "default", monkeypatch)  # nothing is minted until the first call


def test_a_new_database_gets_the_pool_and_its_history(tmp_path: Path) -> None:
    """`sluice_db` changed while the proxy runs: the pool's state goes to the new database, as the rows do."""
    with configured(tmp_path, lambda core: [Credentials(core)]) as proxy:
        credentials = proxy.chain.parts[1]
        moved = tmp_path / "moved.db"
        proxy.tctx.configure(proxy.chain, sluice_db=str(moved))
        assert credentials.pool is not None
        credentials.pool.record_event(HOST, "reset", "by hand")
    db = sluice_db.connect(moved)
    assert [row[0] for row in db.execute("select host from credentials")] == [HOST]
    assert [row[0] for row in db.execute("select event from credential_events")] == ["reset"]
