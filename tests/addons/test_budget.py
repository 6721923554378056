"""Budget admission (addons/budget.py): a budgeted client's call goes out only if its worst case fits."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from addons.budget import UNKNOWN_MODELS_OPTION, Budget
from addons.gate import Gate
from addons.rewrite import Rewrite
from state import store as sluice_db
from tests.addons.proxy import CONFIG, MESSAGE, configured, llm_flow


def budgeted(usd: float) -> str:
    return CONFIG.replace('user_id = "alice@example.com"', f'budget = {{ usd = {usd}, period = "day" }}')


def parts(core):  # type: ignore[no-untyped-def]
    return [Gate(core), Rewrite(core), Budget(core)]


def test_a_call_over_the_budget_is_refused_with_429_naming_the_budget_and_when_to_retry(
    tmp_path: Path,
) -> None:
    flow = llm_flow({**MESSAGE, "model": "claude-opus-4-1", "max_tokens": 32000})
    with configured(tmp_path, parts, budgeted(0.01)) as proxy:
        asyncio.run(proxy.hook("request", flow))
        call = proxy.record(flow)
    assert flow.response is not None and flow.response.status_code == 429
    assert flow.response.headers["x-should-retry"] == "false"
    assert 1 <= int(flow.response.headers["retry-after"]) <= 24 * 3600  # the UTC day's end
    error = json.loads(flow.response.content or b"")["error"]
    assert error["type"] == "rate_limit_error" and "alice" in error["message"] and "day" in error["message"]
    [note] = call.notes
    assert note.startswith("refused: budget exhausted (client alice: $")
    assert "/day, $" in note and ", resets 20" in note
    assert call.budget_hold is None and call.answered_locally


def test_a_call_that_fits_is_admitted_and_holds_its_estimate(tmp_path: Path) -> None:
    flow = llm_flow()
    with configured(tmp_path, parts, budgeted(10)) as proxy:
        asyncio.run(proxy.hook("request", flow))
        call = proxy.record(flow)
    assert flow.response is None
    assert call.budget_hold is not None and 0 < call.budget_hold < 0.01


def test_holds_add_up_until_the_budget_refuses(tmp_path: Path) -> None:
    """The holds of calls still in flight count: the budget cannot be overrun by calls sent at once."""
    body = {**MESSAGE, "max_tokens": 4000}
    with configured(tmp_path, parts, budgeted(0.05)) as proxy:
        flows = [llm_flow(body) for _ in range(5)]
        for flow in flows:
            asyncio.run(proxy.hook("request", flow))
        statuses = [flow.response.status_code if flow.response else None for flow in flows]
        held = sum(proxy.record(flow).budget_hold or 0 for flow in flows)
    assert statuses[0] is None and 429 in statuses
    assert held <= 0.05


def test_a_model_without_a_price_is_refused_naming_the_option(tmp_path: Path) -> None:
    flow = llm_flow({**MESSAGE, "model": "claude-not-a-real-model"})
    with configured(tmp_path, parts, budgeted(10)) as proxy:
        asyncio.run(proxy.hook("request", flow))
    assert flow.response is not None and flow.response.status_code == 403
    assert UNKNOWN_MODELS_OPTION in json.loads(flow.response.content or b"")["error"]["message"]


def test_a_token_count_is_not_held(tmp_path: Path) -> None:
    count = llm_flow(path="/v1/messages/count_tokens")
    with configured(tmp_path, parts, budgeted(0.0001)) as proxy:
        asyncio.run(proxy.hook("request", count))
        assert count.response is None and proxy.record(count).budget_hold is None


def test_a_client_without_a_budget_is_not_held(tmp_path: Path) -> None:
    unbudgeted = llm_flow({**MESSAGE, "max_tokens": 32000})
    with configured(tmp_path, parts) as proxy:
        asyncio.run(proxy.hook("request", unbudgeted))
        assert unbudgeted.response is None and proxy.record(unbudgeted).budget_hold is None


def governed(extra: str) -> str:
    return CONFIG.replace('user_id = "alice@example.com"', extra)


def test_a_call_its_budget_refuses_gives_its_rate_admission_back(tmp_path: Path) -> None:
    """Refused by the budget after its rates admitted it, a call never went out: it must not use up the
    minute's requests (or its tokens) of a client that then sends a call it can afford."""
    config = governed('budget = { usd = 0.01, period = "day" }\nlimits = { rpm = 1, output_tpm = 40000 }')
    with configured(tmp_path, parts, config) as proxy:
        costly = llm_flow({**MESSAGE, "model": "claude-opus-4-1", "max_tokens": 32000})
        asyncio.run(proxy.hook("request", costly))
        assert costly.response is not None and "budget exhausted" in (costly.response.text or "")
        cheap = llm_flow()
        asyncio.run(proxy.hook("request", cheap))
        assert cheap.response is None and proxy.record(cheap).rate_held
        third = llm_flow()
        asyncio.run(proxy.hook("request", third))
    assert third.response is not None and third.response.status_code == 429
    assert third.response.headers["x-sluice-limit"] == "client alice rpm"


def test_a_compressed_body_cannot_be_counted_against_input_tokens(tmp_path: Path) -> None:
    config = governed("limits = { input_tpm = 5000 }")
    with configured(tmp_path, parts, config) as proxy:
        flow = llm_flow()
        flow.request.headers["content-encoding"] = "br"
        flow.request.raw_content = b"\x8b\x00\x80not really brotli"
        asyncio.run(proxy.hook("request", flow))
        call = proxy.record(flow)
    assert flow.response is not None and flow.response.status_code == 429
    assert flow.response.headers["x-should-retry"] == "false" and "retry-after" not in flow.response.headers
    assert "its body is compressed (br)" in json.loads(flow.response.content or b"")["error"]["message"]
    assert not call.rate_held


def test_a_new_database_gets_the_budget_holds(tmp_path: Path) -> None:
    """`sluice_db` changed while the proxy runs: admissions are held in the new database."""
    flow = llm_flow()
    with configured(tmp_path, parts, budgeted(10)) as proxy:
        moved = tmp_path / "moved.db"
        proxy.tctx.configure(proxy.chain, sluice_db=str(moved))
        asyncio.run(proxy.hook("request", flow))
        assert flow.response is None
    db = sluice_db.connect(moved)
    assert [row[0] for row in db.execute("select client from budget_holds where state = 'held'")] == ["alice"]
    assert [row[0] for row in db.execute("select client from budgets")] == ["alice"]


def test_on_postgresql_holds_add_up_and_a_refused_call_gives_its_rate_admission_back(
    tmp_path: Path, postgres_url: str
) -> None:
    """The same admission with `sluice_db` a PostgreSQL database: budgets and rate limits run there."""
    config = governed('budget = { usd = 0.05, period = "day" }\nlimits = { rpm = 4 }')
    body = {**MESSAGE, "max_tokens": 4000}
    with configured(tmp_path, parts, config) as proxy:
        proxy.tctx.configure(proxy.chain, sluice_db=postgres_url)
        flows = [llm_flow(body) for _ in range(4)]
        for flow in flows:
            asyncio.run(proxy.hook("request", flow))
        statuses = [flow.response.status_code if flow.response else None for flow in flows]
        held = sum(proxy.record(flow).budget_hold or 0 for flow in flows)
        fifth = llm_flow()
        asyncio.run(proxy.hook("request", fifth))
    assert statuses[0] is None and 429 in statuses and 0 < held <= 0.05
    assert fifth.response is None  # the calls the budget refused gave their minute's requests back
    with sluice_db.open_store(postgres_url).reading() as db:
        rows = db.execute("select client, state from budget_holds").fetchall()
        (admissions,) = db.execute("select count(*) from rate_admissions").fetchone()
    assert set(rows) == {("alice", "held")} and len(rows) == statuses.count(None) + 1
    assert admissions == len(rows)
