"""Deeply nested JSON for the parsers' property tests: every parser must fail open on it, never raise.

Python's JSON scanner refuses nesting past its recursion limit with a RecursionError (raised at once, at
that depth); a parsed value just under the limit is still deeper than a recursive walker may go.
"""

from __future__ import annotations

from hypothesis import strategies as st

# Depths around the limits that matter: the interpreter's recursion limit (1000), the JSON scanner's (a
# little higher), and far past both.
DEPTHS = st.one_of(st.integers(1, 64), st.integers(900, 1600), st.sampled_from([5_000, 100_000]))


@st.composite
def nested(draw: st.DrawFn) -> str:
    """A JSON value nested `depth` levels deep, in arrays or objects, closed or left open."""
    depth = draw(DEPTHS)
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"b":', "}]")]))
    closed = draw(st.booleans())
    inner = draw(st.sampled_from(["1", '"x"', "[]", "{}", "null"]))
    return opener * depth + inner + (closer * depth if closed else "")


@st.composite
def bodies(draw: st.DrawFn) -> str:
    """A request-like body with deep nesting at the top or inside one of the fields the rules read."""
    value = draw(nested())
    template = draw(
        st.sampled_from(
            [
                "{}",
                '{"model":"m","messages":[{"role":"user","content":{}}]}',
                '{"model":"m","messages":[{"role":"user","content":[{"type":"tool_result","content":{}}]}]}',
                '{"model":"m","tools":[{"name":"t","input_schema":{}}],"messages":[]}',
                '{"model":"m","system":[{"type":"text","text":"s","cache_control":{}}]}',
                '{"model":"m","input":[{"type":"function_call_output","output":{}}]}',
            ]
        )
    )
    return template.replace("{}", value, 1) if template != "{}" else value
