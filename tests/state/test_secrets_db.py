from __future__ import annotations

import os
import stat

from rules.credential_files import OAuthTokens
from rules.secrets import fingerprint
from state import store as sluice_db
from state.oauth import OAuthStore
from state.pool import CredentialEntry, CredentialPool
from state.secrets_db import SECRETS_MIGRATIONS, open_secrets_db
from state.store.sqlite import secrets_path_for
from tests.fake_clock import NOW, FakeClock

HOST = "api.anthropic.com"
KEYS = ["sk-ant-api03-" + "a" * 40, "sk-ant-api03-" + "b" * 40]
ACCESS, REFRESH = "sk-ant-oat01-" + "x" * 40, "sk-ant-ort01-" + "y" * 40


def test_secrets_file_is_private_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        open_secrets_db(tmp_path / "a.secrets.db").close()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.secrets.db").stat().st_mode) == 0o600

    loose = tmp_path / "b.secrets.db"
    loose.touch(mode=0o644)
    os.chmod(loose, 0o644)
    OAuthStore(loose).seed(HOST, OAuthTokens(ACCESS, REFRESH, NOW - 10))
    for path in tmp_path.glob("b.secrets.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_opening_migrates_once_and_twice_is_harmless(tmp_path):
    path = tmp_path / "sluice.secrets.db"
    first = open_secrets_db(path)
    second = open_secrets_db(path)  # another process opening the same file
    for conn in (first, second):
        assert conn.execute("pragma user_version").fetchone()[0] == len(SECRETS_MIGRATIONS)
        columns = {row[1] for row in conn.execute("pragma table_info(oauth_tokens)")}
        assert {"access_token", "refresh_token", "lease_until", "rejected_fingerprint"} <= columns
        conn.close()


def test_no_secret_reaches_the_main_database(tmp_path):
    db_path = tmp_path / "sluice.db"
    clock = FakeClock()
    pool = CredentialPool(sluice_db.connect(db_path), clock=clock)
    pool.sync_config(HOST, [CredentialEntry(f"keys[{n}]", fingerprint(key)) for n, key in enumerate(KEYS)])
    pool.report(HOST, fingerprint(KEYS[0]), 401, {}, f"Incorrect API key provided: {KEYS[0]}")
    pool.report(HOST, fingerprint(KEYS[1]), 429, {"retry-after": "3"}, "rate limited")
    store = OAuthStore(secrets_path_for(db_path), clock=clock)
    store.seed(HOST, OAuthTokens(ACCESS, REFRESH, NOW + 3600))

    main_bytes = b"".join(
        path.read_bytes() for path in db_path.parent.iterdir() if path.name.startswith("sluice.db")
    )
    for secret in [*KEYS, ACCESS, REFRESH]:
        assert secret.encode() not in main_bytes
    assert fingerprint(KEYS[0]).encode() in main_bytes
    secrets_bytes = b"".join(path.read_bytes() for path in tmp_path.glob("sluice.secrets.db*"))
    assert ACCESS.encode() in secrets_bytes  # where the tokens are, and the only place
