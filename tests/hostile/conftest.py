"""The hostile-client suite runs on the end-to-end fixtures (test CA, fake provider, real mitmdump processes).

Every test here is an attack: a client holding a client key, or holding none, tries to make sluice send a
real credential somewhere else, skip a check, spend past a budget, or exhaust the proxy.
"""

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import (  # re-exported: pytest finds fixtures by name in this module
    ProxyFactory,
    fake,
    fake_server,
    module_start_proxy,
    plain_fake,
    plain_fake_server,
    start_proxy,
    test_ca,
)
from tests.e2e.harness import CertAuthority, Proxy
from tests.fake_provider import FakeProvider
from tests.hostile.support import CONFIG, ENV, REAL_KEYS, hosts_env
from tests.hostile.traps import Trap

__all__ = [
    "fake",
    "fake_server",
    "module_start_proxy",
    "plain_fake",
    "plain_fake_server",
    "start_proxy",
    "test_ca",
]


# Traps where an attacker would point sluice, and a proxy whose credential hosts' wrong ports lead to them.


@pytest.fixture(scope="module")
def plain_trap() -> Iterator[Trap]:
    with Trap() as trap:
        yield trap


@pytest.fixture(scope="module")
def tls_trap(test_ca: CertAuthority) -> Iterator[Trap]:
    with Trap(certfile=test_ca.leaf_cert, keyfile=test_ca.leaf_key) as trap:
        yield trap


@pytest.fixture(scope="module")
def proxy(
    module_start_proxy: ProxyFactory, fake_server: FakeProvider, plain_trap: Trap, tls_trap: Trap
) -> Proxy:
    env = {**ENV, "SLUICE_TEST_HOSTS": hosts_env(fake_server, plain_trap, tls_trap)}
    return module_start_proxy(config_toml=CONFIG, env=env)


@pytest.fixture
def reverse_keeping_host(
    start_proxy: ProxyFactory, fake_server: FakeProvider, plain_trap: Trap, tls_trap: Trap
) -> Proxy:
    """The same proxy in reverse mode to api.anthropic.com, keeping the client's Host header."""
    env = {**ENV, "SLUICE_TEST_HOSTS": hosts_env(fake_server, plain_trap, tls_trap)}
    return start_proxy(
        config_toml=CONFIG,
        env=env,
        mode="reverse:https://api.anthropic.com",
        extra_args=["--set", "keep_host_header=true"],
    )


@pytest.fixture(autouse=True)
def no_real_key_anywhere(plain_trap: Trap, tls_trap: Trap) -> Iterator[None]:
    """After every test: no trap ever received any real key, from any test so far."""
    yield
    for trap in (plain_trap, tls_trap):
        for key in REAL_KEYS:
            assert not trap.holds(key), f"a real key reached the {'TLS' if trap.tls else 'plain'} trap"
