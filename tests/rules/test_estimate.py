import pytest

from rules.estimate import DEFAULT_OUTPUT_TOKENS, estimate_tokens


@pytest.mark.parametrize(
    ("api", "body", "size", "expected"),
    [
        ("messages", {"max_tokens": 1000}, 4001, (1001, 1000)),
        ("chat", {"max_completion_tokens": 50, "max_tokens": 9}, 8, (2, 50)),
        ("chat", {"max_tokens": 9}, 8, (2, 9)),
        ("responses", {"max_output_tokens": 77}, 0, (0, 77)),
        ("messages", {}, 4, (1, DEFAULT_OUTPUT_TOKENS)),
        ("messages", {"max_tokens": True}, 4, (1, DEFAULT_OUTPUT_TOKENS)),
        ("messages", {"max_tokens": "9"}, 4, (1, DEFAULT_OUTPUT_TOKENS)),
        ("messages", None, 4, (1, DEFAULT_OUTPUT_TOKENS)),
    ],
)
def test_estimate(api, body, size, expected):
    assert estimate_tokens(api, body, size) == expected
