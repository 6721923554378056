"""Prices a call with genai-prices; never guesses.

sluice's token columns are normalized (`input_tokens` is uncached input only); genai-prices wants the total
input with cache reads and writes as parts of it, so the totals are rebuilt here. An unknown model, or usage
the library cannot price, gives `None` and a reason that goes into `calls.cost_note`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import genai_prices

# Anthropic reports `service_tier` as standard/priority/batch, OpenAI as default/priority/flex/scale/auto;
# genai-prices keys tier variants on these names. Values not listed here are priced at the standard rate.
_PRICED_TIERS = {"priority", "flex", "batch"}


@dataclass(frozen=True, slots=True)
class Priced:
    cost_usd: float | None
    note: str | None


def price_call(
    provider: str | None,
    model: str | None,
    *,
    input_tokens: int | None,
    cache_read_tokens: int | None = None,
    cache_write_5m_tokens: int | None = None,
    cache_write_1h_tokens: int | None = None,
    output_tokens: int | None = None,
    web_search_requests: int | None = None,
    service_tier: str | None = None,
    speed: str | None = None,
) -> Priced:
    """Price one call at today's prices (a call is priced when it finishes)."""
    if not model:
        return Priced(None, "no model in request or response")
    if input_tokens is None and output_tokens is None:
        return Priced(None, "no usage reported")
    read = cache_read_tokens or 0
    write_5m = cache_write_5m_tokens or 0
    write_1h = cache_write_1h_tokens or 0
    usage: dict[str, int] = {
        "input_tokens": (input_tokens or 0) + read + write_5m + write_1h,
        "output_tokens": output_tokens or 0,
    }
    if read:
        usage["cache_read_tokens"] = read
    if write_5m or write_1h:
        usage["cache_write_tokens"] = write_5m + write_1h
        usage["cache_write_5m_tokens"] = write_5m
        usage["cache_write_1h_tokens"] = write_1h
    if web_search_requests:
        usage["web_searches"] = web_search_requests
    context: dict[str, str] = {}
    if speed == "fast":
        context["speed"] = "fast"
    if service_tier in _PRICED_TIERS:
        context["processing" if service_tier == "batch" else "service_tier"] = service_tier
    return _price(provider, model, tuple(sorted(usage.items())), tuple(sorted(context.items())))


@lru_cache(maxsize=4096)
def _price(
    provider: str | None,
    model: str,
    usage: tuple[tuple[str, int], ...],
    context: tuple[tuple[str, str], ...],
) -> Priced:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = genai_prices.calc_price(
                genai_prices.Usage(**dict(usage)),
                model,
                provider_id=provider,
                price_context=dict(context) or None,
            )
    except LookupError:
        return Priced(None, f"no price known for model {model!r} at {provider or 'any provider'}")
    except (ValueError, TypeError, ArithmeticError) as e:
        return Priced(None, f"cannot price this usage: {e}")
    return Priced(float(result.total_price), None)
