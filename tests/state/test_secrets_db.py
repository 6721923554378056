from __future__ import annotations

import os
import re
import stat
import uuid
from pathlib import Path

import psycopg
import pytest

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


def _readme_grants() -> list[str]:
    """The statements of the README's grants for PostgreSQL, in order (`\\connect` kept as a statement)."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text.split("### OAuth tokens on PostgreSQL", 1)[1]
    block = section.split("```sql\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("--")]
    statements: list[str] = []
    for line in lines:
        if line.startswith("\\"):
            statements.append(line)
        else:
            statements.extend(part.strip() for part in line.split(";") if part.strip())
    return statements


def test_the_readme_grants_let_reports_read_everything_but_the_oauth_tokens(postgres_server):
    """The README's SQL, run as written (with names of this test's own): the proxies' role applies the
    migrations and stores a token; the readers' role reads `calls` and the views, and is refused the
    secrets schema."""
    suffix = uuid.uuid4().hex[:8]
    names = {"sluice_proxy": f"proxy_{suffix}", "sluice_reader": f"reader_{suffix}"}
    passwords = {"change-me": f"p-{suffix}", "change-me-too": f"r-{suffix}"}
    database = f"fleet_{suffix}"
    admin = postgres_server.admin_connect()
    try:
        for statement in _readme_grants():
            for old, new in names.items():
                statement = statement.replace(old, new)
            for old, new in passwords.items():
                statement = statement.replace(f"'{old}'", f"'{new}'")
            statement = re.sub(r"\bdatabase sluice\b", f"database {database}", statement)
            if statement.startswith("\\connect"):
                admin.close()
                admin = postgres_server.admin_connect(database)
            else:
                admin.execute(statement)

        def url(role: str, password: str) -> str:
            return postgres_server.url(database).replace(
                f"{postgres_server.user}:{postgres_server.password}@", f"{role}:{password}@"
            )

        proxy = sluice_db.open_store(url(names["sluice_proxy"], passwords["change-me"]))
        OAuthStore(proxy).seed(HOST, OAuthTokens(ACCESS, REFRESH, NOW + 3600))
        with proxy.reading() as db:
            db.execute(
                "insert into calls (id, started_at, host, path) values ('c1', '2026-12-01T00:00:00Z', ?, ?)",
                (HOST, "/v1/messages"),
            )
        proxy.close()

        with psycopg.connect(
            url(names["sluice_reader"], passwords["change-me-too"]), autocommit=True
        ) as reader:
            assert reader.execute("select count(*) from calls").fetchone() == (1,)
            assert reader.execute("select calls from daily_usage").fetchall() == [(1,)]
            reader.execute("select count(*) from credentials").fetchone()
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema sluice_secrets"):
                reader.execute("select access_token from sluice_secrets.oauth_tokens")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute("insert into calls (id, started_at, host, path) values ('x', 'x', 'x', 'x')")
            tables = reader.execute(
                "select table_schema, table_name from information_schema.tables where table_schema <> "
                "'information_schema' and table_schema not like 'pg_%'"
            ).fetchall()
            assert "sluice_secrets" not in {schema for schema, _ in tables}
    finally:
        admin.close()
        with postgres_server.admin_connect() as cleanup:
            cleanup.execute(f"drop database if exists {database} with (force)")
            for role in names.values():
                cleanup.execute(f"drop role if exists {role}")


def test_a_database_error_is_logged_without_the_row_it_quotes(postgres_url: str) -> None:
    import psycopg

    from state.store_errors import described

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("create table t (token text, n int not null)")
        with pytest.raises(psycopg.errors.NotNullViolation) as failed:
            conn.execute("insert into t values ('sk-ant-oat01-SECRET', null)")
    assert "sk-ant-oat01-SECRET" in str(failed.value)  # psycopg's text quotes the failing row
    assert "sk-ant-oat01-SECRET" not in described(failed.value)
    assert "null value" in described(failed.value)
