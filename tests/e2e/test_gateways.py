"""OpenAI-compatible gateways end to end: the official `openai` SDK through a real mitmdump running sluice,
to the fake provider answering as the gateway. The wire format comes from the path; the price from whoever
bills the call: the upstream's `provider` (a genai-prices id), else the host's own provider, else the
model's name; a model nobody prices stays unpriced, saying why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import Proxy, openai_client, wait_for_rows
from tests.fake_provider import GATEWAY_HOST, OPENROUTER_HOST, FakeProvider, Usage

pytestmark = pytest.mark.e2e

REAL_KEY = "sk-or-v1-REAL-gateway-key-0123456789"
CLIENT_KEY = "sluice-client-key-for-gateway-tests"
CONFIG = f"""
[[clients]]
name = "ci"
key = "{CLIENT_KEY}"

[[upstreams]]
host = "{OPENROUTER_HOST}"
provider = "openrouter"
keys = ["env:SLUICE_TEST_OPENROUTER_KEY"]

[[rules.system_blocks]]
name = "house-rules"
text = "Answer as briefly as you can."
"""
USAGE = Usage(input_tokens=1200, cache_read_tokens=0, output_tokens=300)


@pytest.fixture(scope="module")
def gateway(module_start_proxy: ProxyFactory) -> Proxy:
    return module_start_proxy(config_toml=CONFIG, env={"SLUICE_TEST_OPENROUTER_KEY": REAL_KEY})


def chat(proxy: Proxy, host: str, model: str, api_key: str = CLIENT_KEY) -> str:
    with openai_client(proxy, api_key, base_url=f"https://{host}/v1") as client:
        answer = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Say hello."}],
            extra_headers={"Cookie": "session=tracking"},
        )
    return answer.choices[0].message.content or ""


def test_a_gateway_call_is_priced_by_the_gateway_with_the_key_swapped_and_the_rules_applied(
    gateway: Proxy, fake: FakeProvider
) -> None:
    since = gateway.mark()
    fake.next(path="/v1/chat/completions", usage=USAGE, model="anthropic/claude-sonnet-4.5")

    assert chat(gateway, OPENROUTER_HOST, "anthropic/claude-sonnet-4.5")

    [row] = wait_for_rows(gateway.db_path, 1, since=since)
    [request] = fake.requests
    assert request.credential() == REAL_KEY  # swapped, as a bearer: the gateway speaks OpenAI's format
    assert request.header("cookie") is None  # the header allow-list holds for gateways too
    sent = json.loads(request.body)
    assert sent["messages"][0] == {"role": "system", "content": "Answer as briefly as you can."}
    assert (row["provider"], row["api"]) == ("openrouter", "chat")
    assert row["model"] == "anthropic/claude-sonnet-4.5"
    # OpenRouter's own price for the model (genai-prices): $3 in, $15 out per million tokens.
    assert row["cost_usd"] == pytest.approx((1200 * 3 + 300 * 15) / 1e6)
    assert REAL_KEY not in Path(gateway.db_path).read_bytes().decode("latin-1")


@pytest.mark.parametrize(
    ("model", "priced"),
    [("gemini-2.5-flash", (1200 * 0.30 + 300 * 2.50) / 1e6), ("llama3.1:8b-instruct-q4", None)],
)
def test_an_unknown_gateway_is_priced_by_the_models_own_name_or_not_at_all(
    gateway: Proxy, fake: FakeProvider, model: str, priced: float | None
) -> None:
    since = gateway.mark()
    fake.next(path="/v1/chat/completions", usage=USAGE, model=model)

    assert chat(gateway, GATEWAY_HOST, model, api_key="sk-whatever-the-gateway-takes")

    [row] = wait_for_rows(gateway.db_path, 1, since=since)
    assert (row["host"], row["api"], row["model"]) == (f"{GATEWAY_HOST}", "chat", model)
    if priced is None:
        assert row["cost_usd"] is None
        assert row["cost_note"] == f"no price known for model {model!r} at any provider"
    else:
        assert row["cost_usd"] == pytest.approx(priced)
