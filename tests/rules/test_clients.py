import pytest

from rules.clients import KnownClient, digest, match_client, presented_key

CLIENTS = [KnownClient("alice", digest("sk-sluice-alice")), KnownClient("bob", digest("sk-sluice-bob"))]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-api-key": "k1"}, "k1"),
        ({"authorization": "Bearer k2"}, "k2"),
        ({"authorization": "bearer   k3 "}, "k3"),
        ({"authorization": "Basic abc"}, None),
        ({"authorization": "Bearer "}, None),
        ({}, None),
        ({"x-api-key": "k1", "authorization": "Bearer k2"}, "k1"),
    ],
)
def test_presented_key(headers, expected):
    assert presented_key(headers) == expected


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("sk-sluice-alice", "alice"),
        ("sk-sluice-bob", "bob"),
        ("sk-sluice-eve", None),
        (None, None),
        ("", None),
    ],
)
def test_match_client(key, name):
    found = match_client(key, CLIENTS)
    assert (found.name if found else None) == name


def test_empty_key_never_matches_a_client_with_empty_digest():
    assert match_client("", [KnownClient("blank", digest(""))]) is None
