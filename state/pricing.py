"""Prices a call with genai-prices; never guesses.

Who bills a call decides its prices (`billing_provider`): the `provider` of its `[[upstreams]]` entry, else
the provider whose own API host it went to (sluice's providers, then genai-prices' map of provider hosts:
OpenRouter, Groq, DeepSeek, Together, ...), else the model's own name: a `vendor/model` prefix naming a
provider, or genai-prices' match of the model's name (`claude-*`, `gpt-*`, `gemini-*`). What none of them
prices stays unpriced, with the reason.

sluice's token columns are normalized (`input_tokens` is uncached input only); genai-prices wants the total
input with cache reads and writes as parts of it, so the totals are rebuilt here. An unknown model, usage
the library cannot price, or counts no real call has (rules/usage.py's MAX_TOKENS_PER_CALL) give `None`
and a reason that goes into `calls.cost_note`.

Budgets (addons/budget.py) price a call before it runs with `estimate_call`, which fails closed: a model
with no price is refused unless the operator named a model to price it as, and a body sluice could not
read is priced at the provider's highest prices genai-prices knows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import genai_prices
from genai_prices import types as genai_types
from genai_prices.data_snapshot import get_snapshot

from rules.estimate import estimate_tokens
from rules.providers import find_provider, provider_for_host, providers, wire_format
from rules.usage import MAX_TOKENS_PER_CALL

# Anthropic reports `service_tier` as standard/priority/batch, OpenAI as default/priority/flex/scale/auto;
# genai-prices keys tier variants on these names. Values not listed here are priced at the standard rate.
_PRICED_TIERS = {"priority", "flex", "batch"}
MAX_MODEL_CHARS = 256  # longer than any provider's model id (OpenRouter's and fine-tunes' are under 100)


@dataclass(frozen=True, slots=True)
class Priced:
    cost_usd: float | None
    note: str | None
    # genai-prices has no price for the model (or there was no model): the one failure that pricing the
    # call as another, named model can stand in for.
    unpriced_model: bool = False


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
    """Price one call at today's prices (a call is priced when it finishes). `provider` is who bills it (a
    sluice provider or a genai-prices id); None lets the model's name decide (`billing_provider`)."""
    if not model:
        return Priced(None, "no model in request or response", unpriced_model=True)
    if len(model) > MAX_MODEL_CHARS:
        # A client writes the name: genai-prices' lookup takes time linear in it, and the note and the
        # price cache would keep it. No provider names a model this long.
        return Priced(None, f"model name over {MAX_MODEL_CHARS} characters; not priced", unpriced_model=True)
    if input_tokens is None and output_tokens is None:
        return Priced(None, "no usage reported")
    counts = {
        "input_tokens": input_tokens,
        "cache_read_tokens": cache_read_tokens,
        "cache_write_5m_tokens": cache_write_5m_tokens,
        "cache_write_1h_tokens": cache_write_1h_tokens,
        "output_tokens": output_tokens,
        "web_search_requests": web_search_requests,
    }
    absurd = [f"{name}={value}" for name, value in counts.items() if not _plausible(value)]
    if absurd:
        return Priced(None, f"suspect usage: {', '.join(absurd)}; not priced")
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
    provider_id = pricing_id(provider) if provider else None
    if provider_id is None and (prefixed := _by_prefix(model)) is not None:
        provider_id, model = prefixed
    return _price(provider_id, model, tuple(sorted(usage.items())), tuple(sorted(context.items())))


def pricing_id(provider: str) -> str:
    """genai-prices' id for a provider sluice names (`gemini` is priced as `google`)."""
    for known in providers():
        if known.name == provider:
            return known.pricing_id or known.name
    return provider


@lru_cache(maxsize=1024)
def billing_provider(host: str) -> str | None:
    """The provider whose own API host `host` is: sluice's providers, then genai-prices' host map; None
    when neither knows it (the model's name decides then, at pricing)."""
    own = provider_for_host(host)
    if own is not None:
        return own.name
    try:
        return str(get_snapshot().find_provider(None, None, f"https://{host.lower().rstrip('.')}/").id)
    except LookupError:
        return None


@lru_cache(maxsize=1)
def price_providers() -> frozenset[str]:
    """Every provider genai-prices has prices for, by id."""
    return frozenset(str(provider.id) for provider in get_snapshot().providers)


def _by_prefix(model: str) -> tuple[str, str] | None:
    """(provider, model) for a `vendor/model` name whose vendor genai-prices knows (`anthropic/claude-…`)."""
    vendor, slash, rest = model.partition("/")
    if slash and rest and vendor.lower() in price_providers():
        return vendor.lower(), rest
    return None


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
        return Priced(
            None, f"no price known for model {model!r} at {provider or 'any provider'}", unpriced_model=True
        )
    except (ValueError, TypeError, ArithmeticError) as e:
        return Priced(None, f"cannot price this usage: {e}")
    return Priced(float(result.total_price), None)


def _plausible(count: int | None) -> bool:
    return count is None or (type(count) is int and 0 <= count <= MAX_TOKENS_PER_CALL)


def price_as(priced: Priced, stand_in: str | None, reprice: Callable[[str], Priced]) -> Priced:
    """`priced`, or, when its model has no price and the operator named a `stand_in` model, the call
    priced at that model (`reprice(stand_in)`) with a note saying so."""
    if priced.cost_usd is not None or not priced.unpriced_model or not stand_in:
        return priced
    again = reprice(stand_in)
    if again.cost_usd is None:
        return Priced(None, f"{priced.note}; and as {stand_in}: {again.note}")
    return Priced(again.cost_usd, f"priced as {stand_in}: {priced.note}")


# --- before the call: what a budget reserves ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a budgeted call may cost at most. `cost_usd` is positive and finite, or None with `refusal`
    (the message the client reads); `note` says how it was priced when that is not the plain way."""

    cost_usd: float | None
    note: str | None = None
    refusal: str | None = None
    reason: str | None = None  # the refusal in a few words, for the call's row


def estimate_call(
    provider: str,
    api: str,
    model: str | None,
    body: Mapping[str, object] | None,
    body_bytes: int,
    *,
    unknown_model_as: str | None = None,
    option: str = "budget_price_unknown_models_as",
) -> Estimate:
    """The worst-case cost of a call before it runs; fails closed, never raises.

    - A body sluice could not read (`body` None): its size in tokens, and UNBOUNDED_OUTPUT_TOKENS of output,
      at the highest input and output prices genai-prices knows for `provider`'s models (the provider may
      read a model and ceiling there that sluice cannot). No such prices: refused.
    - A model genai-prices cannot price (or none): priced as `unknown_model_as` when the operator named
      one (`option`), else refused with a message naming the option.
    - Anything that comes to zero, or is not a finite number, is refused: a budget never admits a call
      for free.
    """
    input_tokens, output_tokens = estimate_tokens(wire_format(api), body, body_bytes)
    if body is None:
        cost = price_at_highest(provider, input_tokens=input_tokens, output_tokens=output_tokens)
        if cost is None:
            return Estimate(
                None,
                refusal=f"sluice: the request body could not be read and no prices are "
                f"known for {provider}'s models, so its cost cannot be bounded",
                reason="body not read and no prices known",
            )
        return _checked(Estimate(cost, f"body not read: estimated at {provider}'s highest known prices"))
    service_tier = body.get("service_tier")
    speed = body.get("speed")

    def price(name: str | None) -> Priced:
        return price_call(
            provider,
            name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            service_tier=service_tier if isinstance(service_tier, str) else None,
            speed=speed if isinstance(speed, str) else None,
        )

    priced = price(model)
    if priced.cost_usd is not None and priced.cost_usd <= 0:
        # A model genai-prices lists at no cost per token (a data gap, or a unit sluice does not meter):
        # as unknown as one it does not list, for a budget.
        priced = Priced(None, f"genai-prices lists {model!r} at no cost per token", unpriced_model=True)
    priced = price_as(priced, unknown_model_as, price)
    if priced.cost_usd is None:
        if priced.unpriced_model and not unknown_model_as:
            known = find_provider(provider)
            example = (known.example_model if known else "") or "a-known-model"
            return Estimate(
                None,
                refusal=(
                    f"sluice: model {shown(model)} has no known price, so a budgeted client cannot be "
                    f"charged for it ({priced.note}); the operator can set {option} = "
                    f'{{ {provider} = "{example}" }} to price such models as a known one'
                ),
                reason=f"model has no price ({option} not set)",
            )
        return Estimate(
            None,
            refusal=f"sluice: this call's cost cannot be estimated: {priced.note}",
            reason="cost cannot be estimated",
        )
    return _checked(Estimate(priced.cost_usd, priced.note))


def shown(model: str | None) -> str:
    """A client's model name as a message repeats it: quoted, cut short."""
    if model is not None and len(model) > MAX_MODEL_CHARS:
        return f"{model[:MAX_MODEL_CHARS]!r}… ({len(model)} characters)"
    return repr(model)


def _checked(estimate: Estimate) -> Estimate:
    cost = estimate.cost_usd
    if cost is None or not math.isfinite(cost) or cost <= 0:
        return Estimate(
            None,
            refusal=f"sluice: this call's cost cannot be estimated (got {cost!r})",
            reason="cost cannot be estimated",
        )
    return estimate


def price_at_highest(provider: str, *, input_tokens: int, output_tokens: int) -> float | None:
    """USD for these tokens at the highest input and output prices per token among `provider`'s models in
    genai-prices' data; None when it lists none. An input token is priced at the dearest way input is
    billed (a 1-hour cache write costs twice plain input)."""
    highest = highest_prices(provider)
    if highest is None:
        return None
    per_input, per_output = highest
    return float((input_tokens * per_input + output_tokens * per_output) / 1_000_000)


@lru_cache(maxsize=16)
def highest_prices(provider: str) -> tuple[Decimal, Decimal] | None:
    """(input, output) USD per million tokens: the maxima over every model, price period, tier and
    variant genai-prices lists for `provider`; None if it lists no token prices there. Read from the
    library's own data at first use (addons/budget.py calls it at start-up)."""
    highest = {"input": Decimal(0), "output": Decimal(0)}
    wanted = pricing_id(provider)
    for known in get_snapshot().providers:
        if known.id != wanted:
            continue
        for model in known.models:
            for prices in _all_prices(model):
                for key, value in vars(prices).items():
                    if not key.endswith("_mtok") or value is None:
                        continue
                    side = "output" if key.startswith("output") else "input"
                    highest[side] = max(highest[side], _dearest(value))
    if highest["input"] <= 0 or highest["output"] <= 0:
        return None
    return highest["input"], highest["output"]


def _all_prices(model: genai_types.ModelInfo) -> list[genai_types.ModelPrice]:
    if isinstance(model.prices, genai_types.ModelPrice):
        found = [model.prices]
    else:
        found = [conditional.prices for conditional in model.prices]
    found.extend(variant.prices for variant in model.price_variants or ())
    return found


def _dearest(value: object) -> Decimal:
    if isinstance(value, genai_types.TieredPrices):
        return max([value.base, *(tier.price for tier in value.tiers)])
    return value if isinstance(value, Decimal) else Decimal(0)
