"""What a secret may be made of, checked wherever one enters sluice.

Every secret sluice holds ends up as an HTTP header value (`x-api-key`, `Authorization: Bearer`), written
by sluice itself. A CR or LF in one would end the header there and start another, or a second request on
the same connection (RFC 9112 §2.2: a bare CR or LF inside a field is an error); any other control
character, a space or a non-ASCII byte has no place in an API key or token either. Such a secret is refused
where it enters (the config, an OAuth credentials file, a token endpoint's answer), naming where it came
from and never the value. Fails closed.
"""

from __future__ import annotations

# RFC 9110 §5.6.2 tokens and the base64/base64url alphabets of real keys are all in here; RFC 6750 §2.1's
# b64token is a subset.
_VISIBLE_ASCII = frozenset(chr(code) for code in range(0x21, 0x7F))


def unusable_secret(value: str) -> str | None:
    """Why `value` cannot be sent as a credential, or None. Never quotes the value."""
    if not value:
        return "it is empty"
    for position, char in enumerate(value):
        if char not in _VISIBLE_ASCII:
            kind = "a line break" if char in "\r\n" else "a control character, space or non-ASCII character"
            return f"it contains {kind} (at character {position + 1})"
    return None
