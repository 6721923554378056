"""A hostile client tries to make sluice hand the access token it minted for Vertex AI to a server of its
choosing, or to have sluice answer a token refresh it has no key for.

The proxy mints real tokens from a service-account key (tests/fake_vertex.py); each attack names the Vertex
host in one place (Host header, absolute URL, tunnel target) and an attacker's server in another. No trap may
receive a token the fake Google endpoint issued, or the service account's private key.
"""

from __future__ import annotations

import json

import pytest

from tests import fake_vertex
from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import Proxy, curl
from tests.e2e.test_gemini_wire import wait_until_serving
from tests.fake_provider import FakeProvider
from tests.fake_vertex import GOOGLE_TOKEN_HOST, MODEL, PROJECT, REGION, VERTEX_HOST
from tests.hostile.support import assert_fake_saw_nothing, assert_refused, hosts_env
from tests.hostile.traps import Trap

pytestmark = pytest.mark.e2e

CLIENT_KEY = "sluice-client-mallory-vertex-0b7e"
PATH = f"/v1/projects/{PROJECT}/locations/{REGION}/publishers/anthropic/models/{MODEL}:rawPredict"
BODY = json.dumps(
    {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    }
)
AUTH = ("-H", f"Authorization: Bearer {CLIENT_KEY}", "-H", "content-type: application/json")


@pytest.fixture(scope="module")
def vertex(
    module_start_proxy: ProxyFactory,
    fake_server: FakeProvider,
    plain_trap: Trap,
    tls_trap: Trap,
    tmp_path_factory: pytest.TempPathFactory,
) -> Proxy:
    key_file = fake_server.google.write_key_file(
        tmp_path_factory.mktemp("vertex") / "sa.json", fake_server.token_uri
    )
    env = {
        "SLUICE_E2E_MALLORY": CLIENT_KEY,
        "SLUICE_TEST_HOSTS": hosts_env(fake_server, plain_trap, tls_trap)
        + f",{VERTEX_HOST}:8443=127.0.0.1:{tls_trap.port},{GOOGLE_TOKEN_HOST}:80=127.0.0.1:{plain_trap.port}",
    }
    proxy = module_start_proxy(
        config_toml=fake_vertex.config("mallory", "SLUICE_E2E_MALLORY", f"file:{key_file}"), env=env
    )
    wait_until_serving(proxy)
    return proxy


@pytest.fixture(autouse=True)
def no_token_in_a_trap(fake_server: FakeProvider, plain_trap: Trap, tls_trap: Trap):
    yield
    key_body = "".join(fake_server.google.private_key.splitlines()[1:-1])
    for trap in (plain_trap, tls_trap):
        for secret in (*fake_server.google.issued, key_body[:64]):
            assert not trap.holds(secret), "a minted token or the private key reached a trap"


def test_the_honest_call_gets_a_minted_token(vertex: Proxy, fake: FakeProvider) -> None:
    """The baseline every attack below is measured against: the same request, sent where it says."""
    status, _headers, body = curl(vertex, f"https://{VERTEX_HOST}{PATH}", *AUTH, "--data-binary", BODY)
    assert status == 200, body
    [request] = [r for r in fake.requests if r.path == PATH]
    assert request.header("authorization") == f"Bearer {fake.google.issued[-1]}"


@pytest.mark.parametrize(
    ("scheme", "auth"),
    [("https", AUTH), ("https", ()), ("http", AUTH)],
    ids=["tls", "tls-no-key", "cleartext"],
)
def test_a_connection_to_an_attackers_server_with_the_vertex_host_inside(
    vertex: Proxy, fake: FakeProvider, plain_trap: Trap, tls_trap: Trap, scheme: str, auth: tuple[str, ...]
) -> None:
    trap = tls_trap if scheme == "https" else plain_trap
    before = len(trap.received)
    url = f"{scheme}://127.0.0.1:{trap.port}{PATH}"
    result = curl(vertex, url, "-H", f"Host: {VERTEX_HOST}", *auth, "--data-binary", BODY)
    assert_refused(result, 421, "vertex", VERTEX_HOST)
    assert len(trap.received) == before
    assert_fake_saw_nothing(fake)


def test_the_vertex_host_on_another_port_gets_no_token(
    vertex: Proxy, fake: FakeProvider, tls_trap: Trap
) -> None:
    before = len(tls_trap.received)
    result = curl(vertex, f"https://{VERTEX_HOST}:8443{PATH}", *AUTH, "--data-binary", BODY)
    assert result.status in (421, 403), result.body
    assert len(tls_trap.received) == before
    assert_fake_saw_nothing(fake)


def test_a_tunnel_to_vertex_with_another_host_inside_is_refused(vertex: Proxy, fake: FakeProvider) -> None:
    result = curl(
        vertex, f"https://{VERTEX_HOST}{PATH}", "-H", "Host: attacker.example", *AUTH, "--data-binary", BODY
    )
    assert_refused(result, 421, "vertex", "attacker.example")
    assert_fake_saw_nothing(fake)


@pytest.mark.parametrize(
    "form",
    [
        "grant_type=refresh_token&refresh_token=someone-elses-refresh-token",
        f"grant_type=password&refresh_token={CLIENT_KEY}",
    ],
    ids=["unknown-refresh-token", "another-grant"],
)
def test_a_token_refresh_without_a_client_key_is_not_answered_by_sluice(
    vertex: Proxy, fake: FakeProvider, form: str
) -> None:
    """Only a refresh whose token is a client key is sluice's to answer; any other goes to Google as sent."""
    result = curl(vertex, f"https://{GOOGLE_TOKEN_HOST}/token", "--data-binary", form)
    [request] = fake.requests
    assert request.body.decode() == form and request.sni == GOOGLE_TOKEN_HOST
    assert CLIENT_KEY not in result.body.decode()


def test_a_client_keys_refresh_is_answered_with_that_key_and_nothing_real(
    vertex: Proxy, fake: FakeProvider
) -> None:
    form = f"grant_type=refresh_token&client_id=x&client_secret=y&refresh_token={CLIENT_KEY}"
    status, _headers, body = curl(vertex, f"https://{GOOGLE_TOKEN_HOST}/token", "--data-binary", form)
    assert status == 200
    assert json.loads(body)["access_token"] == CLIENT_KEY
    assert_fake_saw_nothing(fake)


def test_a_client_keys_refresh_in_cleartext_is_not_answered(
    vertex: Proxy, fake: FakeProvider, plain_trap: Trap
) -> None:
    """Over plain HTTP the trade is not sluice's: it passes on as any request to that host would."""
    before = len(plain_trap.received)
    form = f"grant_type=refresh_token&refresh_token={CLIENT_KEY}"
    result = curl(vertex, f"http://{GOOGLE_TOKEN_HOST}/token", "--data-binary", form)
    assert b"access_token" not in result.body
    assert bytes(plain_trap.received[before:]).startswith(b"POST /token HTTP/1.1")
