import pytest

from rules.estimate import (
    DEFAULT_OUTPUT_TOKENS,
    MAX_ESTIMATE_TOKENS,
    UNBOUNDED_OUTPUT_TOKENS,
    estimate_tokens,
)
from rules.providers import wire_format
from rules.rewrite import parse_json

UNBOUNDED = UNBOUNDED_OUTPUT_TOKENS


@pytest.mark.parametrize(
    ("api", "body", "size", "expected"),
    [
        ("messages", {"max_tokens": 1000}, 4001, (1001, 1000)),
        ("chat", {"max_completion_tokens": 50, "max_tokens": 9}, 8, (2, 50)),
        ("chat", {"max_tokens": 9}, 8, (2, 9)),
        ("responses", {"max_output_tokens": 77}, 0, (0, 77)),
        ("messages", {}, 4, (1, DEFAULT_OUTPUT_TOKENS)),
        ("messages", {"max_tokens": None}, 4, (1, DEFAULT_OUTPUT_TOKENS)),
    ],
)
def test_estimate(api, body, size, expected):
    assert estimate_tokens(wire_format(api), body, size) == expected


@pytest.mark.parametrize(
    "text",
    ["true", '"9"', "9.0", "0.5", "-1", "-0", "0", "1e3", "NaN", "[9]", "{}"],
)
def test_a_ceiling_that_is_not_a_positive_integer_is_not_believed(text):
    # The provider may still read "9" or 9.0 as a number, or ignore it and use the model's maximum.
    body = parse_json(f'{{"max_tokens": {text}}}')
    assert estimate_tokens(wire_format("messages"), body, 40) == (10, UNBOUNDED)


def test_a_huge_ceiling_is_clamped_not_dropped():
    # A 31-digit max_tokens once fell back to the 4096 default: the estimate believed less than asked.
    body = parse_json('{"max_tokens": 1000000000000000000000000000000}')
    assert estimate_tokens(wire_format("messages"), body, 4) == (1, MAX_ESTIMATE_TOKENS)
    assert estimate_tokens(wire_format("messages"), {"max_tokens": 10**30}, 4) == (1, MAX_ESTIMATE_TOKENS)
    assert estimate_tokens(wire_format("messages"), parse_json('{"max_tokens": 999999999}'), 4) == (
        1,
        999_999_999,
    )


def test_parsed_numbers_are_read_as_the_rewrite_keeps_them():
    assert estimate_tokens(wire_format("messages"), parse_json('{"max_tokens": 300}'), 4) == (1, 300)


def test_openai_without_a_ceiling_may_write_the_models_maximum():
    assert estimate_tokens(wire_format("chat"), {}, 4) == (1, UNBOUNDED)
    assert estimate_tokens(wire_format("responses"), {"max_output_tokens": None}, 4) == (1, UNBOUNDED)


def test_chat_takes_the_larger_of_its_two_ceilings():
    # A tiny max_tokens beside a large max_completion_tokens must not be the one believed.
    assert estimate_tokens(wire_format("chat"), {"max_tokens": 1, "max_completion_tokens": 5000}, 4) == (
        1,
        5000,
    )
    assert estimate_tokens(wire_format("chat"), {"max_tokens": 5000, "max_completion_tokens": 1}, 4) == (
        1,
        5000,
    )
    assert estimate_tokens(wire_format("chat"), {"max_tokens": 1, "max_completion_tokens": "1"}, 4) == (
        1,
        UNBOUNDED,
    )


def test_chat_n_choices_multiply_the_ceiling():
    assert estimate_tokens(wire_format("chat"), {"max_tokens": 100, "n": 8}, 4) == (1, 800)
    assert estimate_tokens(wire_format("chat"), {"max_tokens": 100, "n": "8"}, 4) == (
        1,
        100,
    )  # the API refuses it
    assert estimate_tokens(wire_format("chat"), {"max_tokens": 10**8, "n": 10**8}, 4) == (
        1,
        MAX_ESTIMATE_TOKENS,
    )


def test_an_unread_body_may_ask_for_anything():
    assert estimate_tokens(wire_format("messages"), None, 4000) == (1000, UNBOUNDED)


@pytest.mark.parametrize("size", [0, -5])
def test_output_is_never_zero(size):
    input_tokens, output_tokens = estimate_tokens(wire_format("messages"), {"max_tokens": 0}, size)
    assert input_tokens == 0 and output_tokens > 0
    assert estimate_tokens(wire_format("messages"), {}, 0, default_output=0)[1] == 1
