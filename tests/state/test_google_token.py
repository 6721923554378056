"""Access tokens minted through google-auth at a token endpoint (the fake Google one, on loopback): what
comes back, what a refusal and an outage become for the OAuth store, and that no proxy from the environment
is used."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from state.google_token import check_credentials, identity, mint
from state.oauth import TokenRefused
from tests.fake_provider import FakeProvider
from tests.fake_vertex import FakeGoogle


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def google(server: FakeProvider) -> FakeGoogle:
    server.reset()
    server.google.lifetime_s = 1800
    return server.google


def key_file(google: FakeGoogle, server: FakeProvider) -> str:
    return json.dumps(google.service_account_info(server.token_uri))


def test_a_service_account_key_mints_a_token_the_endpoint_issued(google: FakeGoogle, server: FakeProvider):
    minted = mint(key_file(google, server), verify=True)
    assert minted.access_token == google.issued[-1]
    assert 1700 < minted.expires_in <= 1800
    assert minted.refresh_token is None  # the store keeps its own marker


def test_a_proxy_in_the_environment_is_not_used(
    google: FakeGoogle, server: FakeProvider, monkeypatch: pytest.MonkeyPatch
):
    with socket.create_server(("127.0.0.1", 0)) as dead:
        port = dead.getsockname()[1]
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert mint(key_file(google, server), verify=True).access_token == google.issued[-1]


def test_a_key_the_endpoint_does_not_know_is_refused_for_good(google: FakeGoogle, server: FakeProvider):
    stranger = FakeGoogle()
    with pytest.raises(TokenRefused) as refused:
        mint(json.dumps(stranger.service_account_info(server.token_uri)), verify=True)
    assert "invalid_grant" in str(refused.value)
    assert stranger.private_key.splitlines()[1] not in str(refused.value)
    assert google.refused


def test_an_endpoint_that_cannot_be_reached_is_a_transient_failure(google: FakeGoogle):
    with socket.create_server(("127.0.0.1", 0)) as dead:
        port = dead.getsockname()[1]
    info = google.service_account_info(f"http://127.0.0.1:{port}/token")
    with pytest.raises(Exception) as failed:
        mint(json.dumps(info), verify=True)
    assert not isinstance(failed.value, TokenRefused)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "not a JSON credentials file"),
        ('{"private_key": "-----BEGIN PRIVATE KEY-----"}', "has a `type`"),
        ('{"type": "service_account", "private_key": "garbage"}', "google-auth cannot use it"),
    ],
)
def test_an_unusable_key_file_is_named_without_its_contents(text: str, problem: str):
    with pytest.raises(ValueError) as bad:
        check_credentials(text)
    assert problem in str(bad.value) and "garbage" not in str(bad.value) and "BEGIN" not in str(bad.value)


def test_the_credential_is_named_by_a_fingerprint_never_its_key(google: FakeGoogle, server: FakeProvider):
    text = key_file(google, server)
    assert check_credentials(text) == google.client_email
    named = identity(text)
    assert named.startswith("google:") and google.private_key[40:80] not in named
    assert identity(text) == named != identity(None)
