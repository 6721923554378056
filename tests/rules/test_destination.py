from __future__ import annotations

import pytest

from rules.destination import Destination, credential_refusal, misdirection, normalize_host

ANTHROPIC = Destination.of("https", "api.anthropic.com", 443)


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("API.Anthropic.com", "api.anthropic.com"),
        ("api.anthropic.com.", "api.anthropic.com"),
        (" api.anthropic.com ", "api.anthropic.com"),
        ("[::1]", "::1"),
    ],
)
def test_host_names_compare_without_case_or_trailing_dot(name: str, normal: str) -> None:
    assert normalize_host(name) == normal


@pytest.mark.parametrize(
    "stated",
    [
        [],  # HTTP/1.0: no Host at all
        [("api.anthropic.com", None)],
        [("API.ANTHROPIC.COM.", 443)],
        [("api.anthropic.com", None), ("api.anthropic.com", 443)],  # Host and :authority, same server
    ],
)
def test_a_request_naming_its_own_destination_agrees(stated: list[tuple[str, int | None]]) -> None:
    assert misdirection(ANTHROPIC, stated) is None


@pytest.mark.parametrize(
    ("stated", "named"),
    [
        ([("evil.example", None)], "evil.example"),
        ([("api.anthropic.com", 8443)], "api.anthropic.com:8443"),
        ([("api.anthropic.com", None), ("evil.example", None)], "evil.example"),  # duplicate Host headers
        ([("api.anthropic.com.evil.example", None)], "api.anthropic.com.evil.example"),
        ([("api.anthropic.com:abc", None)], "api.anthropic.com:abc"),  # unparseable: kept whole
    ],
)
def test_a_request_naming_another_server_is_misdirected(
    stated: list[tuple[str, int | None]], named: str
) -> None:
    reason = misdirection(ANTHROPIC, stated)
    assert reason == f"the request names {named} but its connection goes to api.anthropic.com"


def test_the_destination_names_its_port_when_it_is_not_the_default() -> None:
    trap = Destination.of("http", "127.0.0.1", 9000)
    assert misdirection(trap, [("api.anthropic.com", None)]) == (
        "the request names api.anthropic.com but its connection goes to 127.0.0.1:9000"
    )


@pytest.mark.parametrize(
    ("destination", "reason"),
    [
        (ANTHROPIC, None),
        (
            Destination.of("http", "api.anthropic.com", 80),
            "credentials for api.anthropic.com are only sent over TLS (https), and this request is cleartext",
        ),
        (
            Destination.of("https", "api.anthropic.com", 8443),
            "credentials for api.anthropic.com are only sent to port 443, not 8443",
        ),
        (Destination.of("https", "evil.example", 443), "evil.example is not api.anthropic.com"),
    ],
)
def test_a_credential_goes_only_over_tls_to_its_configured_port(
    destination: Destination, reason: str | None
) -> None:
    assert credential_refusal(destination, "api.anthropic.com", 443) == reason


def test_a_configured_port_other_than_443_is_the_only_one() -> None:
    gateway = Destination.of("https", "gateway.internal", 8443)
    assert credential_refusal(gateway, "gateway.internal", 8443) is None
    assert credential_refusal(Destination.of("https", "gateway.internal", 443), "gateway.internal", 8443)


def test_a_tls_server_name_other_than_the_destination_is_misdirected() -> None:
    assert misdirection(ANTHROPIC, [("api.anthropic.com", None)], "API.anthropic.com.") is None
    assert misdirection(ANTHROPIC, [("api.anthropic.com", None)], "attacker.example") == (
        "the TLS server name is attacker.example but the connection goes to api.anthropic.com"
    )
