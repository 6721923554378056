"""Keeping an upstream's echo of the real credential away from everyone else.

Some upstreams (gateways more than the providers themselves, which mask keys) repeat the credential they
were given in an error message or a header. Whatever reaches a client, the database, a log or a saved flow
has it replaced by the credential's fingerprint, the same name the `credential` column uses.
"""

from __future__ import annotations

from collections.abc import Sequence

# Shorter strings are not credentials, and would match by accident.
MIN_SECRET_LENGTH = 8


def scrub_secrets(data: bytes, secrets: Sequence[tuple[bytes, bytes]]) -> bytes:
    """`data` with every occurrence of each secret replaced by its stand-in; `data` itself when none occurs.

    `secrets` holds (secret, stand-in) pairs. Fails closed: every occurrence goes, overlapping or not.
    """
    for secret, stand_in in secrets:
        if len(secret) >= MIN_SECRET_LENGTH and secret in data:
            data = data.replace(secret, stand_in)
    return data
