"""Fixtures for end-to-end tests: the test CA, the fake provider, and real mitmdump processes.

    def test_usage_is_recorded(fake, sluice_proxy):
        since = sluice_proxy.mark()
        fake.next(usage=Usage(input_tokens=7, output_tokens=3))
        anthropic_client(sluice_proxy).messages.create(...)
        [row] = sluice_proxy.wait_for_rows(1, since=since)

One fake provider serves the whole session; `fake` resets it before each test. Proxies are module-scoped
where tests can share one (`bare_proxy`, `sluice_proxy`, `module_start_proxy`) and per-test otherwise
(`start_proxy`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import harness
from tests.e2e.harness import CertAuthority, Proxy, make_test_ca
from tests.fake_provider import FakeProvider

ProxyFactory = Callable[..., Proxy]


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    """A CA generated for this session, and a leaf for the provider hosts, localhost and 127.0.0.1."""
    return make_test_ca(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture(scope="session")
def fake_server(test_ca: CertAuthority) -> Iterator[FakeProvider]:
    """The session's TLS fake provider, unreset: tests want `fake`."""
    with FakeProvider(certfile=test_ca.leaf_cert, keyfile=test_ca.leaf_key, ca_pem=test_ca.ca_cert) as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeProvider) -> Iterator[FakeProvider]:
    """The TLS fake provider, reset for this test; a bug inside the fake fails the test."""
    fake_server.reset()
    yield fake_server
    errors = fake_server.errors
    fake_server.reset()
    if errors:
        pytest.fail("the fake provider crashed:\n" + "\n".join(errors))


@pytest.fixture(scope="session")
def plain_fake_server() -> Iterator[FakeProvider]:
    with FakeProvider() as server:
        yield server


@pytest.fixture
def plain_fake(plain_fake_server: FakeProvider) -> Iterator[FakeProvider]:
    """A plain-HTTP fake provider (for `--mode reverse:http://127.0.0.1:PORT`), reset for this test."""
    plain_fake_server.reset()
    yield plain_fake_server
    errors = plain_fake_server.errors
    plain_fake_server.reset()
    if errors:
        pytest.fail("the plain fake provider crashed:\n" + "\n".join(errors))


def _factory(default_dir: Callable[[], Path], fake: FakeProvider) -> tuple[ProxyFactory, list[Proxy]]:
    started: list[Proxy] = []

    def start(workdir: Path | None = None, **kwargs: Any) -> Proxy:
        kwargs.setdefault("fake", fake)
        proxy = harness.start_proxy(workdir or default_dir(), **kwargs)
        started.append(proxy)
        return proxy

    return start, started


@pytest.fixture
def start_proxy(tmp_path: Path, fake_server: FakeProvider) -> Iterator[ProxyFactory]:
    """`start_proxy(workdir=None, *, addon=True, config_toml=None, extra_args=(), mode=None, env=None, ...)`

    Starts a mitmdump for this test (in a fresh directory under `tmp_path` unless given one) and stops
    every one it started when the test ends. Keyword arguments are `harness.start_proxy`'s.
    """
    counter = iter(range(1_000))
    start, started = _factory(lambda: tmp_path / f"proxy-{next(counter)}", fake_server)
    yield start
    for proxy in reversed(started):
        proxy.stop()


@pytest.fixture(scope="module")
def module_start_proxy(
    tmp_path_factory: pytest.TempPathFactory, fake_server: FakeProvider
) -> Iterator[ProxyFactory]:
    """Like `start_proxy`, but the proxies live until the module's last test."""
    start, started = _factory(lambda: tmp_path_factory.mktemp("proxy"), fake_server)
    yield start
    for proxy in reversed(started):
        proxy.stop()


@pytest.fixture(scope="module")
def bare_proxy(module_start_proxy: ProxyFactory) -> Proxy:
    """A mitmdump with no sluice addon, shared by the module."""
    return module_start_proxy(addon=False)


@pytest.fixture(scope="module")
def sluice_proxy(module_start_proxy: ProxyFactory) -> Proxy:
    """A mitmdump running `addons/sluice.py` with no config (recording only), shared by the module.

    Shared means shared database: take `since = proxy.mark()` before a call and wait with `since=`.
    """
    return module_start_proxy(addon=True)
