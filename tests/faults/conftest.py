"""The fault suite runs on the end-to-end fixtures (test CA, fake provider, real mitmdump processes)."""

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.conftest import (  # re-exported: pytest finds fixtures by name in this module
    fake,
    fake_server,
    module_start_proxy,
    start_proxy,
    test_ca,
)
from tests.e2e.harness import Proxy
from tests.faults.support import assert_no_tracebacks

__all__ = ["fake", "fake_server", "module_start_proxy", "start_proxy", "test_ca"]


@pytest.fixture(scope="module")
def proxy(module_start_proxy: Callable[..., Proxy]) -> Iterator[Proxy]:
    """One sluice proxy for the module, with a 1 s idle-stream timeout; its shutdown must be clean too."""
    proxy = module_start_proxy(config_toml="idle_timeout_s = 1\n")
    yield proxy
    proxy.stop()
    assert_no_tracebacks(proxy)


@pytest.fixture
def since(proxy: Proxy) -> Iterator[int]:
    """Rows already in the shared database; after the test, the log must still be free of tracebacks."""
    yield proxy.mark()
    assert_no_tracebacks(proxy)
