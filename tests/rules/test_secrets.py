from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.secrets import unusable_secret


@pytest.mark.parametrize(
    "value", ["sk-ant-api03-AbC_dEf-123", "sk-proj-xyz", "ya29.a0Af.B-c_d~e+f/g=", "gw:key!#$%&'*^`|"]
)
def test_keys_and_tokens_as_they_come_are_usable(value: str) -> None:
    assert unusable_secret(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("sk-ant\r\nX-Evil: 1", "it contains a line break (at character 7)"),
        ("sk-ant\nGET / HTTP/1.1", "it contains a line break (at character 7)"),
        ("sk-ant\x00", "it contains a control character, space or non-ASCII character (at character 7)"),
        ("sk ant", "it contains a control character, space or non-ASCII character (at character 3)"),
        ("sk-ant\x7f", "it contains a control character, space or non-ASCII character (at character 7)"),
        ("sk-ünt", "it contains a control character, space or non-ASCII character (at character 4)"),
        ("", "it is empty"),
    ],
)
def test_a_secret_that_would_break_a_header_is_refused_without_quoting_it(value: str, reason: str) -> None:
    assert unusable_secret(value) == reason


@given(st.text(min_size=1))
def test_a_secret_judged_usable_never_holds_a_line_break(value: str) -> None:
    if unusable_secret(value) is None:
        assert "\r" not in value and "\n" not in value and value.isascii()
