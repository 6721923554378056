import pytest

from state.pricing import price_call


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
