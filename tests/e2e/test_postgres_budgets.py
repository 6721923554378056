"""A budget shared by proxies on one PostgreSQL database, end to end: two real mitmdumps, the real anthropic
SDK calling through both at once, the fake provider, and a real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anthropic
import psycopg
import pytest

from tests.e2e.harness import Proxy, anthropic_client, async_anthropic_client
from tests.e2e.test_budgets import CLIENT_KEY, FULL_USE, REQUEST
from tests.e2e.test_postgres_fleet import DEADLINE_S, StartProxy, _on, _polls, _wait_for_rows
from tests.fake_provider import FakeProvider
from tests.postgres import PostgresServer

pytestmark = pytest.mark.e2e

BUDGET_USD = 0.05
PER_PROXY = 10
# A client known by its key, with a budget; the key reaches the provider as sent (no [[upstreams]]).
CONFIG = f"""
[[clients]]
name = "alice"
key = "env:SLUICE_KEY_ALICE"
budget = {{ usd = {BUDGET_USD}, period = "day" }}
"""


def _holds(url: str) -> list[tuple[str, str, float]]:
    with psycopg.connect(url) as conn:
        return conn.execute("select id, state, amount_usd from budget_holds").fetchall()


def _wait_for_proxies(url: str, n: int) -> None:
    for _ in _polls():
        with psycopg.connect(url) as conn:
            tables = conn.execute("select to_regclass('proxy_instances')").fetchone()
            if tables != (None,) and conn.execute("select count(*) from proxy_instances").fetchone() == (n,):
                return
    raise AssertionError(f"{n} proxies did not say they are alive within {DEADLINE_S}s")


def test_two_proxies_on_one_postgresql_database_never_overspend_one_budget(
    fake: FakeProvider, start_proxy: StartProxy, postgres_server: PostgresServer, postgres_url: str
) -> None:
    proxies = [
        start_proxy(
            config_toml=CONFIG,
            env={"SLUICE_KEY_ALICE": CLIENT_KEY},
            set_db=False,
            extra_args=_on(postgres_url),
        )
        for _ in range(2)
    ]
    # Each call uses all it reserved (about $0.015): settling frees no room, so how many fit is fixed.
    fake.set_default(delay=0.5, usage=FULL_USE)

    async def burst(proxy: Proxy) -> list[BaseException | Any]:
        async with async_anthropic_client(proxy, api_key=CLIENT_KEY) as client:
            calls = (client.messages.create(**REQUEST) for _ in range(PER_PROXY))
            return await asyncio.gather(*calls, return_exceptions=True)

    async def both() -> list[BaseException | Any]:
        first, second = await asyncio.gather(*(burst(proxy) for proxy in proxies))
        return [*first, *second]

    results = asyncio.run(both())
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(admitted) == 3 == len(fake.requests)  # three calls of $0.015 fit $0.05, a fourth would not
    for error in refused:  # sluice's 429, in Anthropic's envelope, which the SDK reads as such
        assert isinstance(error, anthropic.RateLimitError), error
        assert error.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert "budget exhausted for client alice" in error.message
        assert error.response.headers["x-should-retry"] == "false"
    rows = _wait_for_rows(postgres_url, 2 * PER_PROXY)
    spent = sum(row["cost_usd"] or 0 for row in rows if row["status"] == 200)
    assert 0 < spent <= BUDGET_USD  # no call was in flight past the budget: nothing over it
    assert sum(row["status"] == 429 for row in rows) == len(refused)
    holds = _holds(postgres_url)
    assert sorted(state for _, state, _ in holds) == ["settled"] * 3
    assert sum(amount for _, _, amount in holds) == pytest.approx(spent)
    for proxy in proxies:
        proxy.stop()
        assert not proxy.tracebacks()
        assert postgres_server.password not in proxy.log_text()


OUTAGE_CONFIG = (
    CONFIG
    + """
[[clients]]
name = "bob"
key = "env:SLUICE_KEY_BOB"
limits = { rpm = 100 }
"""
)
BOB_KEY = "sk-sluice-limited-bob"


def test_with_postgresql_away_each_proxy_spends_only_its_share_of_the_budget_left(
    fake: FakeProvider, start_proxy: StartProxy, start_postgres: Callable[[], PostgresServer]
) -> None:
    server = start_postgres()
    url = server.create_database()
    env = {"SLUICE_KEY_ALICE": CLIENT_KEY, "SLUICE_KEY_BOB": BOB_KEY}
    one, two = (
        start_proxy(config_toml=OUTAGE_CONFIG, env=env, set_db=False, extra_args=_on(url)) for _ in range(2)
    )
    fake.set_default(usage=FULL_USE)  # a call costs what it reserved, about $0.015
    _wait_for_proxies(url, 2)  # each says it is alive once it has read its configuration
    for proxy in (one, two):  # each reads the budget as it admits: $0.015, then $0.03 of $0.05 used
        with anthropic_client(proxy, api_key=CLIENT_KEY) as client:
            assert client.messages.create(**REQUEST).content
    server.stop()
    # What was left, $0.02 and $0.035 as they read it, shared between the two proxies: one more call in all.
    outcomes = []
    for proxy in (one, one, two):
        with anthropic_client(proxy, api_key=CLIENT_KEY) as client:
            try:
                outcomes.append(bool(client.messages.create(**REQUEST).content))
            except anthropic.RateLimitError as refused:
                assert "budget exhausted for client alice" in refused.message
                assert "the database is away" in refused.message
                outcomes.append(False)
    assert outcomes == [True, False, False]
    with anthropic_client(one, api_key=BOB_KEY) as client, pytest.raises(anthropic.APIStatusError) as away:
        client.messages.create(**REQUEST)
    assert away.value.status_code == 503 and "the database is away" in away.value.message
    one.wait_for_log("budgets: the database is away", timeout=DEADLINE_S)
    server.start()
    for _ in _polls():  # the hold admitted meanwhile is written when the proxy finds the database back
        holds = _holds(url)
        if len(holds) == 3 and all(state == "settled" for _, state, _ in holds):
            break
    else:
        raise AssertionError(f"holds after the outage: {_holds(url)}")
    assert sum(amount for _, _, amount in holds) <= BUDGET_USD
    one.wait_for_log("budgets: the database is back", timeout=DEADLINE_S)
    for proxy in (one, two):
        proxy.stop()
        assert server.password not in proxy.log_text()
