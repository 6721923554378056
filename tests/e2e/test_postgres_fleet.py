"""Proxies on one PostgreSQL database (`sluice_db=postgresql://…`): real mitmdumps, the real anthropic SDK,
the fake provider, and a real PostgreSQL server the suite starts (tests/postgres.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.e2e.harness import Proxy, anthropic_client, async_anthropic_client, free_port
from tests.e2e.test_recording import CLAUDE_USAGE, MESSAGE
from tests.fake_provider import FakeProvider
from tests.postgres import PostgresServer

pytestmark = pytest.mark.e2e

StartProxy = Callable[..., Proxy]
DEADLINE_S = 60.0


def _rows(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        cursor = conn.execute("select * from calls order by started_at")
        names = [column.name for column in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor]


def _wait_for_rows(url: str, n: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for _ in _polls():
        found = _rows(url)
        if len(found) >= n:
            return found
    raise AssertionError(f"{len(found)} calls rows in PostgreSQL after {DEADLINE_S}s, expected {n}")


def _polls() -> Iterator[None]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        yield
        time.sleep(0.05)


def _on(url: str) -> list[str]:
    return ["--set", f"sluice_db={url}"]


async def _burst(proxy: Proxy, n: int) -> None:
    async with async_anthropic_client(proxy) as client:
        await asyncio.gather(*(client.messages.create(**MESSAGE) for _ in range(n)))


def test_two_proxies_record_every_call_once_into_one_postgresql_database(
    fake: FakeProvider, start_proxy: StartProxy, postgres_server: PostgresServer, postgres_url: str
) -> None:
    one = start_proxy(set_db=False, extra_args=_on(postgres_url))
    two = start_proxy(set_db=False, extra_args=_on(postgres_url))
    n = 40
    fake.next(usage=CLAUDE_USAGE, times=2 * n)
    errors: list[BaseException] = []

    def burst(proxy: Proxy) -> None:
        try:
            asyncio.run(_burst(proxy, n))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=burst, args=(proxy,)) for proxy in (one, two)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S)
    assert not errors, errors

    found = _wait_for_rows(postgres_url, 2 * n)
    one.stop()
    two.stop()
    found = _rows(postgres_url)
    assert len(found) == 2 * n == len({row["id"] for row in found})
    sent_ids = {r.response.header("request-id") or r.response.header("x-request-id") for r in fake.requests}
    assert {row["request_id"] for row in found} == sent_ids
    assert all(row["status"] == 200 and row["input_tokens"] == CLAUDE_USAGE.input_tokens for row in found)
    assert all(row["cost_usd"] and row["cost_usd"] > 0 for row in found)
    assert not (one.workdir / "sluice.db").exists() and not (two.workdir / "sluice.db").exists()
    for proxy in (one, two):
        assert not proxy.tracebacks()
        assert postgres_server.password not in proxy.log_path.read_text(errors="replace")


def test_calls_keep_flowing_while_postgresql_is_away_and_their_rows_land_when_it_is_back(
    fake: FakeProvider, start_proxy: StartProxy, start_postgres: Callable[[], PostgresServer]
) -> None:
    server = start_postgres()
    url = server.create_database()
    proxy = start_proxy(set_db=False, extra_args=_on(url))
    fake.next(usage=CLAUDE_USAGE, times=12)
    with anthropic_client(proxy) as client:
        client.messages.create(**MESSAGE)
        _wait_for_rows(url, 1)
        server.stop()
        for _ in range(10):  # the database is away: the client notices nothing
            assert client.messages.create(**MESSAGE).content
        proxy.wait_for_log("records held in memory", timeout=DEADLINE_S)
        server.start()
        assert client.messages.create(**MESSAGE).content
    found = _wait_for_rows(url, 12)
    proxy.stop()
    assert len(found) == 12 == len({row["id"] for row in found})
    log = proxy.log_path.read_text(errors="replace")
    assert server.password not in log


def test_the_ops_process_reads_its_gauges_from_postgresql(
    fake: FakeProvider, start_proxy: StartProxy, postgres_server: PostgresServer, postgres_url: str
) -> None:
    from tests.e2e.test_ops import ALICE_KEY, CONFIG, ENV, LABEL_1, REAL_KEYS, scrape_until, total
    from tests.e2e.test_ops import MESSAGE as OPS_MESSAGE

    port = free_port()
    metrics = ["--set", f"sluice_metrics=127.0.0.1:{port}", "--set", "sluice_ops_poll_ms=100"]
    proxy = start_proxy(set_db=False, config_toml=CONFIG, env=ENV, extra_args=[*_on(postgres_url), *metrics])
    proxy.wait_for_log(f"127.0.0.1:{port}/metrics")
    fake.next(usage=CLAUDE_USAGE, times=3)
    with anthropic_client(proxy, ALICE_KEY) as client:
        for _ in range(3):
            assert client.messages.create(**OPS_MESSAGE).content
    _wait_for_rows(postgres_url, 3)

    samples = scrape_until(
        port,
        lambda s: total(s, "sluice_budget_spent_usd", client="alice") > 0,
        "alice's spend, from PostgreSQL",
    )
    assert total(samples, "sluice_credential_state", credential=LABEL_1, state="active") == 1
    assert total(samples, "sluice_budget_limit_usd", client="alice", period="day") == 50
    assert total(samples, "sluice_ratelimit_remaining", credential=LABEL_1, limit="anthropic:requests") > 0
    log = proxy.log_path.read_text(errors="replace")
    assert postgres_server.password not in log and not any(key in log for key in REAL_KEYS)
