"""A fleet's run, as issue #15 states it: three mitmdumps on one PostgreSQL database, 200 calls from the
real anthropic SDK, one client budget that binds, one OAuth credential whose token comes due mid-run, and
PostgreSQL stopped mid-load and started again. Every call gets its row, exactly once; the token is refreshed
once; the budget is not overspent by more than the calls in flight."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import anthropic
import psycopg
import pytest

from state.pricing import price_call
from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import Proxy, async_anthropic_client
from tests.e2e.test_credentials import (
    ALICE_KEY,
    ENV,
    MESSAGE,
    MODEL,
    NEW_ACCESS,
    NEW_REFRESH,
    OAUTH_TOKENS,
    OLD_ACCESS,
    OLD_REFRESH,
    api_requests,
    assert_no_secret,
    oauth_config,
)
from tests.e2e.test_postgres_credentials import write_credentials_due_in
from tests.e2e.test_postgres_fleet import _on, _rows, _wait_for_rows
from tests.fake_provider import FakeProvider, Usage
from tests.postgres import PostgresServer

pytestmark = pytest.mark.e2e

# What each answer reports: no more than the call's hold (its input estimate, `max_tokens` of output), so the
# budget's ledger and the rows' costs agree on what was spent.
USAGE = Usage(input_tokens=8, output_tokens=MESSAGE["max_tokens"])
CALLS = 200
IN_FLIGHT_PER_PROXY = 8
DEADLINE_S = 90.0


def _cost() -> float:
    priced = price_call(
        "anthropic", MODEL, input_tokens=USAGE.input_tokens, output_tokens=USAGE.output_tokens
    )
    assert priced.cost_usd is not None
    return priced.cost_usd


async def _calls(proxy: Proxy, n: int, outcomes: list[int]) -> None:
    """`n` calls through `proxy`, at most IN_FLIGHT_PER_PROXY at once; each outcome's HTTP status."""
    gate = asyncio.Semaphore(IN_FLIGHT_PER_PROXY)
    async with async_anthropic_client(proxy, ALICE_KEY, timeout=60) as client:

        async def one() -> None:
            async with gate:
                try:
                    await client.messages.create(**MESSAGE)
                    outcomes.append(200)
                except anthropic.APIStatusError as e:
                    outcomes.append(e.status_code)

        await asyncio.gather(*(one() for _ in range(n)))


def _through_all(proxies: list[Proxy], n: int, outcomes: list[int]) -> None:
    async def run() -> None:
        share = [n // len(proxies) + (1 if i < n % len(proxies) else 0) for i in range(len(proxies))]
        await asyncio.gather(*(_calls(proxy, k, outcomes) for proxy, k in zip(proxies, share, strict=True)))

    asyncio.run(run())


def _log(proxy: Proxy) -> str:
    return proxy.log_path.read_text(errors="replace")


def test_three_proxies_on_postgresql_through_a_token_refresh_and_an_outage_lose_nothing(
    fake: FakeProvider,
    start_proxy: ProxyFactory,
    start_postgres: Callable[[], PostgresServer],
    tmp_path: Path,
) -> None:
    server = start_postgres()
    url = server.create_database()
    budget = round(120 * _cost(), 6)  # about 120 of the 200 calls fit
    due_in_s = 6.0  # after the proxies' start and the first calls: the token comes due mid-run
    credentials = write_credentials_due_in(tmp_path / "credentials.json", due_in_s)
    due_at = time.time() + due_in_s
    config = oauth_config(credentials).replace(
        'key = "env:SLUICE_E2E_ALICE"\n',
        f'key = "env:SLUICE_E2E_ALICE"\nbudget = {{ usd = {budget}, period = "day" }}\n',
    )
    proxies = [start_proxy(set_db=False, config_toml=config, env=ENV, extra_args=_on(url)) for _ in range(3)]
    fake.grant(OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)  # single use: a second refresh would be refused
    fake.accepted_credentials = {OLD_ACCESS, NEW_ACCESS}
    fake.oauth_delay = 0.5
    fake.next(path="/v1/messages", usage=USAGE, times=10 * CALLS)
    outcomes: list[int] = []

    # Before the token comes due, then across it: every proxy ends on the refreshed token. The budget
    # (120 calls) outlasts this part (60 calls, then a few a proxy after the token is due).
    _through_all(proxies, 60, outcomes)  # on a loaded machine the token may come due during these already
    while time.time() < due_at:  # the moment the stored token says it is due (state/oauth.py's skew)
        time.sleep(0.05)
    deadline = time.monotonic() + DEADLINE_S
    while {r.header("authorization") for r in api_requests(fake)[-3:]} != {f"Bearer {NEW_ACCESS}"}:
        assert time.monotonic() < deadline, "the proxies never moved to the refreshed token"
        _through_all(proxies, 3, outcomes)

    # PostgreSQL goes away mid-load: calls keep being answered, rows held in each proxy's memory.
    server.stop()
    _through_all(proxies, 30, outcomes)
    for proxy in proxies:
        proxy.wait_for_log("records held in memory", timeout=DEADLINE_S)
    server.start()
    _through_all(proxies, CALLS - len(outcomes), outcomes)

    assert len(outcomes) == CALLS and set(outcomes) <= {200, 429}, sorted(set(outcomes))
    rows = _wait_for_rows(url, CALLS)
    for proxy in proxies:
        proxy.stop()  # the holds a proxy admitted while the database was away are written by now
    rows = _rows(url)
    assert len(rows) == CALLS == len({row["id"] for row in rows})  # every call once, none twice
    assert sorted(row["status"] for row in rows) == sorted(outcomes)
    [refresh] = fake.token_requests  # one refresh for the fleet
    assert refresh.json()["refresh_token"] == OLD_REFRESH
    spent = sum(row["cost_usd"] or 0 for row in rows if row["status"] == 200)
    in_flight = len(proxies) * IN_FLIGHT_PER_PROXY
    assert 100 * _cost() <= spent <= budget + in_flight * _cost(), (spent, budget)
    assert outcomes.count(429) >= CALLS - (budget + in_flight * _cost()) / _cost() - 1
    with psycopg.connect(url) as conn:
        [(version,)] = conn.execute("select version from sluice_secrets.oauth_tokens").fetchall()
    assert version == 2
    assert_no_secret(json.dumps(rows, default=str))
    for proxy in proxies:
        log = _log(proxy)
        assert_no_secret(log, OAUTH_TOKENS)
        assert server.password not in log
        assert not proxy.tracebacks()
