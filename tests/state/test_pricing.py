import pytest

from rules.estimate import UNBOUNDED_OUTPUT_TOKENS
from state.pricing import billing_provider, estimate_call, highest_prices, price_as, price_call


def test_anthropic_cache_writes_priced_by_ttl():
    # claude-sonnet-4-5: $3 in, $15 out, read x0.1, 5m write x1.25, 1h write x2 (per MTok)
    priced = price_call(
        "anthropic",
        "claude-sonnet-4-5-20250929",
        input_tokens=100,
        cache_read_tokens=1000,
        cache_write_5m_tokens=200,
        cache_write_1h_tokens=300,
        output_tokens=50,
    )
    assert priced.note is None
    assert priced.cost_usd == pytest.approx((100 * 3 + 1000 * 0.3 + 200 * 3.75 + 300 * 6 + 50 * 15) / 1e6)


def test_openai_priority_tier_costs_more_than_default():
    default = price_call("openai", "gpt-5", input_tokens=1000, output_tokens=10, service_tier="default")
    priority = price_call("openai", "gpt-5", input_tokens=1000, output_tokens=10, service_tier="priority")
    assert default.cost_usd is not None and priority.cost_usd is not None
    assert priority.cost_usd > default.cost_usd


def test_unknown_model_is_not_guessed():
    priced = price_call("anthropic", "claude-imaginary-9", input_tokens=10, output_tokens=1)
    assert priced.cost_usd is None
    assert "claude-imaginary-9" in (priced.note or "")


@pytest.mark.parametrize(
    ("model", "kwargs", "note"),
    [
        (None, {"input_tokens": 1}, "no model"),
        ("gpt-5", {"input_tokens": None}, "no usage reported"),
    ],
)
def test_nothing_to_price(model, kwargs, note):
    priced = price_call("openai", model, **kwargs)
    assert priced.cost_usd is None and note in (priced.note or "")


@pytest.mark.parametrize(
    ("counts", "shown"),
    [
        ({"input_tokens": 10, "output_tokens": 10**30}, f"output_tokens={10**30}"),
        ({"input_tokens": -1, "output_tokens": 5}, "input_tokens=-1"),
        ({"input_tokens": 10, "cache_read_tokens": 10**9 + 1}, f"cache_read_tokens={10**9 + 1}"),
    ],
)
def test_absurd_counts_are_not_priced(counts, shown):
    priced = price_call("anthropic", "claude-sonnet-4-5", **counts)
    assert priced.cost_usd is None
    assert (priced.note or "").startswith("suspect usage") and shown in (priced.note or "")


def test_a_billion_tokens_is_still_priced():
    priced = price_call("anthropic", "claude-sonnet-4-5", input_tokens=0, output_tokens=10**9)
    assert priced.cost_usd == pytest.approx(15_000)


def test_an_unknown_model_can_be_priced_as_a_named_one():
    def price(model):
        return price_call("anthropic", model, input_tokens=1_000_000, output_tokens=0)

    unknown = price("claude-imaginary-9")
    assert unknown.unpriced_model
    priced = price_as(unknown, "claude-opus-4-1", price)
    assert priced.cost_usd == pytest.approx(15.0)  # claude-opus-4-1: $15 per million input tokens
    assert "priced as claude-opus-4-1" in (priced.note or "") and "claude-imaginary-9" in (priced.note or "")
    # A model with a price keeps it; a failure other than an unknown model is not papered over.
    known = price("claude-sonnet-4-5")
    assert price_as(known, "claude-opus-4-1", price) is known
    empty = price_call("anthropic", "claude-imaginary-9", input_tokens=None)
    assert price_as(empty, "claude-opus-4-1", price) is empty


def test_highest_prices_come_from_the_librarys_own_data():
    anthropic_in, anthropic_out = highest_prices("anthropic") or (None, None)
    openai_in, openai_out = highest_prices("openai") or (None, None)
    assert anthropic_in is not None and anthropic_out is not None
    assert openai_in is not None and openai_out is not None
    for model in ("claude-opus-4-1", "claude-sonnet-4-5", "claude-3-haiku"):
        one_in = price_call("anthropic", model, input_tokens=1_000_000, output_tokens=0).cost_usd
        one_out = price_call("anthropic", model, input_tokens=0, output_tokens=1_000_000).cost_usd
        assert one_in is not None and one_in <= anthropic_in
        assert one_out is not None and one_out <= anthropic_out
    # An input token may be billed as a 1-hour cache write, at twice the input price.
    write = price_call("anthropic", "claude-opus-4-1", input_tokens=0, cache_write_1h_tokens=10**6)
    assert write.cost_usd is not None and write.cost_usd <= anthropic_in
    for model in ("gpt-5", "gpt-4o", "o3"):
        one_out = price_call("openai", model, input_tokens=0, output_tokens=1_000_000).cost_usd
        assert one_out is not None and one_out <= openai_out
    assert highest_prices("no-such-provider") is None


BODY = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": []}


def test_estimate_prices_the_requested_model():
    found = estimate_call("anthropic", "messages", "claude-sonnet-4-5", BODY, 4000, unknown_model_as=None)
    assert found.cost_usd == pytest.approx((1000 * 3 + 1000 * 15) / 1e6)
    assert found.refusal is None


def test_estimate_refuses_an_unknown_model_and_names_the_option():
    found = estimate_call("anthropic", "messages", "claude-imaginary-9", BODY, 4000)
    assert found.cost_usd is None
    assert found.refusal is not None
    assert "claude-imaginary-9" in found.refusal and "no known price" in found.refusal
    assert "budget_price_unknown_models_as" in found.refusal
    assert '{ anthropic = "claude-opus-4-1" }' in found.refusal  # the example is the provider's own model
    assert found.reason is not None and "no price" in found.reason
    missing = estimate_call("openai", "chat", None, {"messages": []}, 40)
    assert missing.cost_usd is None and "budget_price_unknown_models_as" in (missing.refusal or "")
    gateway = estimate_call("openrouter", "chat", "imaginary-9", {"messages": []}, 40)
    assert '{ openrouter = "a-known-model" }' in (gateway.refusal or "")


def test_estimate_prices_an_unknown_model_as_the_named_one():
    found = estimate_call(
        "anthropic", "messages", "claude-imaginary-9", BODY, 4000, unknown_model_as="claude-opus-4-1"
    )
    assert found.cost_usd == pytest.approx((1000 * 15 + 1000 * 75) / 1e6)
    assert "priced as claude-opus-4-1" in (found.note or "")


def test_an_unread_body_is_estimated_at_the_providers_highest_prices():
    highest_in, highest_out = highest_prices("openai") or (0, 0)
    found = estimate_call("openai", "chat", None, None, 4000)
    expected = (1000 * highest_in + UNBOUNDED_OUTPUT_TOKENS * highest_out) / 1_000_000
    assert found.cost_usd == pytest.approx(float(expected))
    assert found.cost_usd is not None and found.cost_usd > 0
    assert "highest known prices" in (found.note or "")
    empty = estimate_call("anthropic", "messages", None, None, 0)
    assert empty.cost_usd is not None and empty.cost_usd > 0


def test_an_unread_body_at_a_provider_without_prices_is_refused():
    found = estimate_call("no-such-provider", "messages", None, None, 4000)
    assert found.cost_usd is None and found.refusal is not None


@pytest.mark.parametrize(
    "body",
    [
        {**BODY, "max_tokens": 0},
        {**BODY, "max_tokens": -1},
        {**BODY, "max_tokens": 10**30},
        {**BODY, "max_tokens": 1.5},
        {**BODY, "max_tokens": "1"},
        {k: v for k, v in BODY.items() if k != "max_tokens"},
    ],
    ids=["zero", "negative", "huge", "float", "string", "absent"],
)
def test_every_budgeted_estimate_is_positive_and_finite(body):
    found = estimate_call("anthropic", "messages", "claude-sonnet-4-5", body, 100)
    assert found.cost_usd is not None
    assert 0 < found.cost_usd < 20_000  # 10^9 output tokens at $15/MTok at most


@pytest.mark.parametrize(
    ("host", "biller"),
    [
        ("api.anthropic.com", "anthropic"),  # its own host, whatever the path (its OpenAI-compatible one too)
        ("generativelanguage.googleapis.com", "gemini"),
        ("openrouter.ai", "openrouter"),  # genai-prices' map of provider hosts
        ("api.groq.com", "groq"),
        ("api.deepseek.com", "deepseek"),
        ("localhost", None),  # a local vLLM or Ollama: the model's name decides
        ("gateway.internal", None),
    ],
)
def test_who_bills_a_call_is_read_from_its_host(host: str, biller: str | None) -> None:
    assert billing_provider(host) == biller


def test_a_call_nobody_is_named_for_is_priced_by_its_models_own_name() -> None:
    by_prefix = price_call(None, "anthropic/claude-sonnet-4-5", input_tokens=1000, output_tokens=1000)
    by_name = price_call(None, "claude-sonnet-4-5", input_tokens=1000, output_tokens=1000)
    assert by_prefix.cost_usd == by_name.cost_usd == pytest.approx(0.018)
    gemini = price_call("gemini", "gemini-2.5-flash", input_tokens=1000, output_tokens=1000)
    assert gemini.cost_usd == pytest.approx(0.0028)  # sluice's `gemini` is genai-prices' `google`
    local = price_call(None, "llama3.1:8b", input_tokens=1000, output_tokens=1000)
    assert local.cost_usd is None and local.note == "no price known for model 'llama3.1:8b' at any provider"
    # A prefix naming no provider genai-prices knows is not split off: the whole name is looked up.
    assert price_call(None, "acme/claude-sonnet-4-5", input_tokens=1, output_tokens=1).cost_usd is None


def test_a_model_name_no_provider_uses_is_not_looked_up_nor_repeated():
    """A client writes the model name: one of a megabyte took genai-prices a second to look up (on the
    proxy's event loop, at admission and again at settlement) and was repeated in the note, the refusal and
    the price cache. Names that long are no model's: unpriced, and not repeated."""
    model = "gpt-4o-mini" + "a" * 1_000_000

    priced = price_call("openrouter", model, input_tokens=1_000, output_tokens=1_000)
    estimate = estimate_call("openai", "chat", model, {"model": model, "max_tokens": 9}, 100)

    assert priced.cost_usd is None and priced.unpriced_model
    assert priced.note is not None and len(priced.note) < 300
    assert estimate.cost_usd is None
    assert estimate.refusal is not None and len(estimate.refusal) < 1_000


def test_a_long_unknown_model_is_charged_as_the_stand_in():
    model = "claude-" + "x" * 5_000

    estimate = estimate_call(
        "anthropic", "messages", model, {"model": model}, 100, unknown_model_as="claude-opus-4-1"
    )

    assert estimate.cost_usd is not None and estimate.cost_usd > 0
