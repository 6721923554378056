"""The fault suite runs on the end-to-end fixtures (test CA, fake provider, real mitmdump processes)."""

from tests.e2e.conftest import (  # re-exported: pytest finds fixtures by name in this module
    fake,
    fake_server,
    module_start_proxy,
    start_proxy,
    test_ca,
)

__all__ = ["fake", "fake_server", "module_start_proxy", "start_proxy", "test_ca"]
