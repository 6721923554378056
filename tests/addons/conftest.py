"""The contract tests (test_mitm_internals.py) reach the fake provider through a real mitmproxy: they use the
end-to-end fixtures for the test CA and the fake provider."""

from tests.e2e.conftest import fake, fake_server, test_ca  # re-exported: pytest finds fixtures by name here

__all__ = ["fake", "fake_server", "test_ca"]
