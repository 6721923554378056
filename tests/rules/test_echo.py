from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rules.echo import scrub_secrets

SECRET = b"sk-ant-api03-REAL-KEY-0123456789"
STAND_IN = b"[credential sha256:0011223344556677]"


def test_every_occurrence_is_replaced() -> None:
    data = b'{"message": "bad key ' + SECRET + b'", "again": "' + SECRET + b'"}'
    assert scrub_secrets(data, [(SECRET, STAND_IN)]) == data.replace(SECRET, STAND_IN)


def test_data_without_the_secret_is_returned_as_it_is() -> None:
    data = b'{"message": "invalid x-api-key"}'
    assert scrub_secrets(data, [(SECRET, STAND_IN)]) is data


def test_strings_too_short_to_be_credentials_are_not_replaced() -> None:
    assert scrub_secrets(b"a short abc", [(b"abc", b"X")]) == b"a short abc"


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_the_secret_never_survives(before: bytes, after: bytes) -> None:
    assert SECRET not in scrub_secrets(before + SECRET + after, [(SECRET, STAND_IN)])
