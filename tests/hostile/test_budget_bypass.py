"""A budgeted client tries to spend without being charged: a model with no price, a body sluice cannot
read, a provider answer with absurd usage. Real mitmdump, real clients, the fake provider upstream."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from state.pricing import estimate_call
from tests.e2e.harness import Proxy, anthropic_client, curl, openai_client, start_up_failure
from tests.fake_provider import FakeProvider, Usage

pytestmark = pytest.mark.e2e

CLIENT_KEY = "sk-sluice-budget-mallory"
ENV = {
    "SLUICE_KEY_MALLORY": CLIENT_KEY,
    "ANTHROPIC_KEY_1": "sk-ant-real-bypass-key-0001",
    "OPENAI_KEY_1": "sk-real-openai-bypass-key-0001",
}
UNKNOWN = "claude-imaginary-9"
STAND_IN = "claude-opus-4-1"  # $15 in, $75 out per million tokens
MESSAGES = "https://api.anthropic.com/v1/messages"


def config(usd: float, *, unknown_models_as: str | None = None) -> str:
    option = (
        f'budget_price_unknown_models_as = {{ anthropic = "{unknown_models_as}" }}\n'
        if unknown_models_as
        else ""
    )
    return f"""{option}
[[clients]]
name = "mallory"
key = "env:SLUICE_KEY_MALLORY"
budget = {{ usd = {usd}, period = "day" }}

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:ANTHROPIC_KEY_1"]

[[upstreams]]
host = "api.openai.com"
provider = "openai"
keys = ["env:OPENAI_KEY_1"]
"""


def holds(proxy: Proxy) -> list[dict[str, Any]]:
    assert proxy.db_path is not None
    with sqlite3.connect(proxy.db_path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("select * from budget_holds order by created_at")]


def spent(proxy: Proxy) -> dict[str, Any]:
    sluice = Path(sys.executable).with_name("sluice")
    out = subprocess.run(
        [str(sluice), "clients", "--db", str(proxy.db_path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [mallory] = [entry for entry in json.loads(out) if entry["client"] == "mallory"]
    return mallory


def post(proxy: Proxy, body: str | bytes, *extra: str, url: str = MESSAGES) -> Any:
    data = body.decode() if isinstance(body, bytes) else body
    return curl(
        proxy,
        url,
        "-H",
        f"x-api-key: {CLIENT_KEY}",
        "-H",
        "content-type: application/json",
        "--data-raw",
        data,
        *extra,
    )


def test_an_unpriced_model_is_refused_before_the_upstream(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(config_toml=config(100.0), env=ENV)
    with (
        anthropic_client(proxy, api_key=CLIENT_KEY) as client,
        pytest.raises(anthropic.PermissionDeniedError) as refused,
    ):
        client.messages.create(model=UNKNOWN, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    message = refused.value.body["error"]["message"]  # type: ignore[index]
    assert UNKNOWN in message and "no known price" in message and "budget_price_unknown_models_as" in message
    assert refused.value.response.headers["x-should-retry"] == "false"
    with (
        openai_client(proxy, api_key=CLIENT_KEY) as client,
        pytest.raises(openai.PermissionDeniedError) as refused_openai,
    ):
        client.chat.completions.create(model="gpt-imaginary-9", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-imaginary-9" in str(refused_openai.value) and "budget_price_unknown_models_as" in str(
        refused_openai.value
    )
    assert fake.requests == []
    rows = proxy.wait_for_rows(2)
    assert [row["status"] for row in rows] == [403, 403]
    assert all("refused: model has no price" in row["rules_applied"] for row in rows)
    assert holds(proxy) == []


def test_an_unpriced_model_is_charged_as_the_named_model(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(config_toml=config(100.0, unknown_models_as=STAND_IN), env=ENV)
    fake.next(usage=Usage(input_tokens=1000, output_tokens=500))
    with anthropic_client(proxy, api_key=CLIENT_KEY) as client:
        client.messages.create(model=UNKNOWN, max_tokens=1000, messages=[{"role": "user", "content": "hi"}])
    [row] = proxy.wait_for_rows(1)
    assert row["model"] == UNKNOWN
    assert row["cost_usd"] == pytest.approx((1000 * 15 + 500 * 75) / 1e6)
    assert row["cost_note"].startswith(f"priced as {STAND_IN}") and UNKNOWN in row["cost_note"]
    assert f"budget estimate: priced as {STAND_IN}" in row["rules_applied"]
    [hold] = holds(proxy)
    # The hold was the estimate at the stand-in's prices: 1000 output tokens at $75 a million and more.
    assert hold["estimate_usd"] > 1000 * 75 / 1e6
    assert (hold["state"], hold["amount_usd"]) == ("settled", pytest.approx(row["cost_usd"]))
    assert spent(proxy)["spent_usd"] == pytest.approx(row["cost_usd"])


def test_the_named_models_prices_decide_admission(fake: FakeProvider, start_proxy) -> None:
    # At the stand-in's $75 a million, 1000 output tokens need $0.075: more than a $0.05 budget.
    proxy = start_proxy(config_toml=config(0.05, unknown_models_as=STAND_IN), env=ENV)
    with (
        anthropic_client(proxy, api_key=CLIENT_KEY) as client,
        pytest.raises(anthropic.RateLimitError) as refused,
    ):
        client.messages.create(model=UNKNOWN, max_tokens=1000, messages=[{"role": "user", "content": "hi"}])
    assert "budget exhausted" in refused.value.body["error"]["message"]  # type: ignore[index]
    assert fake.requests == []


DUPLICATE_KEYS = (
    '{"model":"claude-sonnet-4-6","max_tokens":1000,"metadata":{},"metadata":{},'
    '"messages":[{"role":"user","content":"hi"}]}'
)


def test_a_body_with_duplicate_keys_holds_the_providers_highest_prices(
    fake: FakeProvider, start_proxy
) -> None:
    proxy = start_proxy(config_toml=config(100.0), env=ENV)
    result = post(proxy, DUPLICATE_KEYS)
    assert result.status == 200
    [seen] = fake.requests
    assert seen.body == DUPLICATE_KEYS.encode()  # forwarded untouched
    [row] = proxy.wait_for_rows(1)
    assert "budget estimate: body not read" in row["rules_applied"]
    [hold] = holds(proxy)
    expected = estimate_call("anthropic", "messages", None, None, len(DUPLICATE_KEYS)).cost_usd
    assert expected is not None and expected > 1.0
    assert hold["estimate_usd"] == pytest.approx(expected)
    # Settled at what the provider reported for the model it read (the fake's default usage, priced).
    assert row["cost_usd"] is not None and row["cost_usd"] > 0
    assert (hold["state"], hold["amount_usd"]) == ("settled", pytest.approx(row["cost_usd"]))


def test_a_body_with_duplicate_keys_is_not_free_on_a_small_budget(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(config_toml=config(1.0), env=ENV)
    result = post(proxy, DUPLICATE_KEYS)
    assert result.status == 429
    assert "budget exhausted" in json.loads(result.body)["error"]["message"]
    assert fake.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_absurd_usage_is_suspect_and_settles_at_the_estimate(
    fake: FakeProvider, start_proxy, stream: bool
) -> None:
    proxy = start_proxy(config_toml=config(5.0), env=ENV)
    fake.next(usage=Usage(input_tokens=21, output_tokens=10**30))
    body = json.dumps(
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 1000,
            "stream": stream,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    result = post(proxy, body, *(["-N"] if stream else []))
    assert result.status == 200
    [row] = proxy.wait_for_rows(1)
    assert row["cost_usd"] is None
    assert row["cost_note"].startswith("suspect usage") and str(10**30) in row["cost_note"]
    assert row["input_tokens"] == 21 and row["output_tokens"] is None
    [hold] = holds(proxy)
    assert hold["state"] == "settled" and hold["amount_usd"] == pytest.approx(hold["estimate_usd"])
    assert 0 < hold["amount_usd"] < 0.1  # about 1000 output tokens at $15 a million
    budget = spent(proxy)
    assert budget["spent_usd"] == pytest.approx(hold["estimate_usd"]) and budget["remaining_usd"] > 4.9


def test_count_tokens_stays_free_and_unbudgeted(fake: FakeProvider, start_proxy) -> None:
    proxy = start_proxy(config_toml=config(0.0001), env=ENV)
    body = json.dumps({"model": UNKNOWN, "messages": [{"role": "user", "content": "hi"}]})
    result = post(proxy, body, url=f"{MESSAGES}/count_tokens")
    assert result.status == 200
    assert len(fake.requests) == 1
    [row] = proxy.wait_for_rows(1)
    assert row["cost_usd"] == 0.0 and row["cost_note"] == "count_tokens is not billed"
    assert holds(proxy) == []


def test_a_stand_in_without_a_price_stops_start_up(fake: FakeProvider, start_proxy, tmp_path: Path) -> None:
    # A typo in the option would otherwise refuse every call to an unpriced model at run time.
    workdir = tmp_path / "bad-stand-in"
    log = start_up_failure(
        start_proxy, workdir, config_toml=config(1.0, unknown_models_as="claude-imaginary-10"), env=ENV
    )
    problem = next(line for line in log.splitlines() if "budget_price_unknown_models_as" in line)
    assert "claude-imaginary-10" in problem and "no price known" in problem
    assert fake.requests == []
