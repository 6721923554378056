"""The end-to-end fixtures' TLS fake provider, for the state tests that talk HTTP to it on loopback (reached
as `localhost`, which its certificate names): `fake` is reset for each test and fails it on a bug in the
fake itself."""

from tests.e2e.conftest import fake, fake_server, test_ca

__all__ = ["fake", "fake_server", "test_ca"]
