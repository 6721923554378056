from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.secrets import describe_reference, fingerprint, scrub, unusable_secret


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


KEY = "sk-ant-api03-" + "a" * 40


def test_labels_name_the_reference_never_a_literal():
    assert describe_reference("keys[0]", "env:ANTHROPIC_KEY_1") == "keys[0] env:ANTHROPIC_KEY_1"
    assert describe_reference("keys[1]", "file:~/keys/two") == "keys[1] file:~/keys/two"
    assert describe_reference("keys[2]", KEY) == "keys[2] (inline)"
    assert fingerprint(KEY).startswith("sha256:") and KEY not in fingerprint(KEY)


def test_scrub_cuts_token_shaped_text():
    message = f"Incorrect API key provided: {KEY}. See https://platform.openai.com/account/api-keys"
    cleaned = scrub(message)
    assert KEY not in cleaned and "Incorrect API key provided: sk-ant…" in cleaned
    assert "platform.openai.com/account/api-keys" in cleaned
    assert len(scrub("x " * 500)) <= 300


def test_scrub_keeps_a_reason_on_one_printable_line():
    """Reasons reach the log, `sluice credentials` and clients' error messages: an upstream's words must not
    forge a log line or drive a terminal."""
    said = "Overloaded\nsluice: forged line\x1b[2J\x07 \u2028end"
    assert scrub(said) == "Overloaded sluice: forged line\\x1b[2J\\x07 end"
