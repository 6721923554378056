"""A call's worst case before it runs: input size and the output ceiling it asks for.

Used to reserve budget. Input tokens are estimated from the body's size (about 4 bytes a token for text
and JSON; base64 media over-counts, which errs on the side of the budget). Output is the request's own
ceiling: Anthropic `max_tokens`, OpenAI chat `max_completion_tokens`/`max_tokens`, Responses
`max_output_tokens`, else `default_output`.
"""

from __future__ import annotations

from collections.abc import Mapping

BYTES_PER_TOKEN = 4
DEFAULT_OUTPUT_TOKENS = 4096

_OUTPUT_FIELDS = {
    "messages": ("max_tokens",),
    "chat": ("max_completion_tokens", "max_tokens"),
    "responses": ("max_output_tokens",),
}


def estimate_tokens(
    api: str, body: Mapping[str, object] | None, body_bytes: int, default_output: int = DEFAULT_OUTPUT_TOKENS
) -> tuple[int, int]:
    """(input tokens, output tokens) at most, roughly; never raises."""
    input_tokens = -(-body_bytes // BYTES_PER_TOKEN)
    output_tokens = default_output
    for name in _OUTPUT_FIELDS.get(api, ()):
        value = _whole_number(body.get(name) if body is not None else None)
        if value is not None and value > 0:
            output_tokens = value
            break
    return input_tokens, output_tokens


def _whole_number(value: object) -> int | None:
    """An int, or a number kept as its exact text (rules/rewrite.py's RawNumber) that spells one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    text = getattr(value, "text", None)
    if isinstance(text, str) and text.isdigit() and len(text) < 19:
        return int(text)
    return None
