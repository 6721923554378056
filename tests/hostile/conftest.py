"""The hostile-client suite runs on the end-to-end fixtures (test CA, fake provider, real mitmdump processes).

Every test here is an attack: a client holding a client key, or holding none, tries to make sluice send a
real credential somewhere else, skip a check, spend past a budget, or exhaust the proxy.
"""

from tests.e2e.conftest import (  # re-exported: pytest finds fixtures by name in this module
    fake,
    fake_server,
    module_start_proxy,
    plain_fake,
    plain_fake_server,
    start_proxy,
    test_ca,
)

__all__ = [
    "fake",
    "fake_server",
    "module_start_proxy",
    "plain_fake",
    "plain_fake_server",
    "start_proxy",
    "test_ca",
]
