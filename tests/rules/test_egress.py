from __future__ import annotations

import pytest

from rules.egress import AllowEntry, is_allowed, parse_allow_entry


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("pypi.org", AllowEntry("pypi.org", None)),
        ("GitHub.com.:443", AllowEntry("github.com", 443)),
        ("*.githubusercontent.com", AllowEntry("githubusercontent.com", None, family=True)),
        ("*.example.com:8443", AllowEntry("example.com", 8443, family=True)),
    ],
)
def test_entries_are_read_in_one_spelling(text: str, entry: AllowEntry) -> None:
    assert parse_allow_entry(text) == entry


@pytest.mark.parametrize(
    "text",
    [
        "",
        "github.com:",
        "github.com:https",
        "github.com:70000",
        "*",
        "*.",
        "a*.b",
        "10.0.0.1:x",
        "[::1]",
        "10.0.0.1",
        "https://pypi.org",
        "pypi.org/simple",
        "a..b",
    ],
)
def test_anything_but_a_name_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected a host name|the port"):
        parse_allow_entry(text)


def test_a_name_is_allowed_only_as_an_entry_spells_it() -> None:
    entries = [parse_allow_entry(text) for text in ("pypi.org", "github.com:443", "*.npmjs.org")]
    assert is_allowed(entries, "PyPI.org.", 80)
    assert is_allowed(entries, "github.com", 443)
    assert not is_allowed(entries, "github.com", 22)
    assert is_allowed(entries, "registry.npmjs.org", 443)
    assert not is_allowed(entries, "npmjs.org", 443)  # a family is the names under it
    assert not is_allowed(entries, "pypi.org.evil.example", 443)
    assert not is_allowed(entries, "evilpypi.org", 443)
    assert not is_allowed([], "pypi.org", 443)


def test_a_name_is_named_on_any_port_an_entry_allows() -> None:
    from rules.egress import names

    entries = [parse_allow_entry(text) for text in ("github.com:443", "*.npmjs.org")]
    assert names(entries, "GitHub.com") and names(entries, "registry.npmjs.org")
    assert not names(entries, "npmjs.org") and not names(entries, "gitlab.com")
