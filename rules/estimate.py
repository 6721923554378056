"""A call's worst case before it runs: input size and the output ceiling it asks for.

Used to reserve budget, so every doubt is resolved upwards (fails closed: never an estimate below what the
provider may bill). Input tokens are estimated from the body's size (about 4 bytes a token for text and
JSON; base64 media over-counts, which errs on the side of the budget). Output is the request's own
ceiling, in the fields its wire format names (`WireFormat.output_fields`: Anthropic `max_tokens`, OpenAI
chat `max_completion_tokens`/`max_tokens`, Responses `max_output_tokens`, Gemini's nested
`generationConfig.maxOutputTokens`); the larger when two are set, times the number of choices where each
may use the whole ceiling (`WireFormat.choices_fields`: chat's `n`). A ceiling is believed only when it is
a positive integer as JSON spells one; anything else the provider might still read as a number (`"9"`,
`9.0`, `-1`, `1e30`, `true`) is estimated at UNBOUNDED_OUTPUT_TOKENS. Without a ceiling: where the model
may then write up to its own maximum (`WireFormat.unbounded_without_ceiling`, OpenAI's and Gemini's),
UNBOUNDED_OUTPUT_TOKENS; where the provider refuses such a request (Anthropic, or sluice's
`max_tokens_default` backfilled one, which is then in the body), `default_output` suffices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rules.providers import WireFormat

BYTES_PER_TOKEN = 4
DEFAULT_OUTPUT_TOKENS = 4096
# The most any current model writes in one call (Anthropic's 128k-output models, OpenAI's gpt-5 family):
# what a call may cost when its ceiling is missing or not a number sluice can believe.
UNBOUNDED_OUTPUT_TOKENS = 128_000
# An estimate is clamped here so that it stays a number genai-prices and SQLite can carry. No model comes
# near it (the largest context windows are around 10^7 tokens); an asked-for ceiling this large prices the
# call far beyond any budget anyway.
MAX_ESTIMATE_TOKENS = 10**9


def estimate_tokens(
    wire: WireFormat,
    body: Mapping[str, object] | None,
    body_bytes: int,
    default_output: int = DEFAULT_OUTPUT_TOKENS,
) -> tuple[int, int]:
    """(input tokens, output tokens) at most, roughly; never raises. Output is always at least 1.

    `body` None means sluice could not read the body (not JSON, duplicate keys, compressed, too deep): the
    provider may read a ceiling there that sluice cannot, so output is UNBOUNDED_OUTPUT_TOKENS.
    """
    input_tokens = min(-(-max(body_bytes, 0) // BYTES_PER_TOKEN), MAX_ESTIMATE_TOKENS)
    if body is None:
        return input_tokens, UNBOUNDED_OUTPUT_TOKENS
    output_tokens = _output_ceiling(wire, body, default_output)
    if wire.choices_fields:
        output_tokens *= max(_choices(_at(body, path)) for path in wire.choices_fields)
    return input_tokens, max(1, min(output_tokens, MAX_ESTIMATE_TOKENS))


def _output_ceiling(wire: WireFormat, body: Mapping[str, object], default_output: int) -> int:
    """The largest ceiling the request states: when two fields are set, the provider may honour either."""
    found: list[int] = []
    for path in wire.output_fields:
        stated = _at(body, path)
        if stated is None:
            continue  # absent, or JSON null: the provider's default, as if absent
        value = _whole_number(stated)
        found.append(value if value is not None and value > 0 else UNBOUNDED_OUTPUT_TOKENS)
    if found:
        return max(found)
    return UNBOUNDED_OUTPUT_TOKENS if wire.unbounded_without_ceiling else max(1, default_output)


def _at(body: Mapping[str, object], path: str) -> object:
    """A field by its dotted path (`generationConfig.maxOutputTokens`); None when any step is missing."""
    value: object = body
    for name in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


def _choices(value: object) -> int:
    """The number of choices (chat's `n`), each of which may use the whole ceiling. Absent or not a positive
    integer: 1 (the API refuses a count that is not one)."""
    count = _whole_number(value)
    return count if count is not None and count > 0 else 1


def _whole_number(value: object) -> int | None:
    """An int, or a number kept as its exact text (rules/rewrite.py's RawNumber) that spells one; clamped
    to MAX_ESTIMATE_TOKENS (a 5000-digit ceiling is not turned into a 5000-digit int)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return min(value, MAX_ESTIMATE_TOKENS)
    text = getattr(value, "text", None)
    if not isinstance(text, str):
        return None
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    if not (digits.isascii() and digits.isdigit()):
        return None  # a fraction, an exponent, NaN
    if negative:
        return -1
    return MAX_ESTIMATE_TOKENS if len(digits) > 10 else min(int(digits), MAX_ESTIMATE_TOKENS)
