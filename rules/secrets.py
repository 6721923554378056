"""What a secret may be made of, checked wherever one enters sluice; how one is named and kept out of text.

Every secret sluice holds ends up as an HTTP header value (`x-api-key`, `Authorization: Bearer`), written
by sluice itself. A CR or LF in one would end the header there and start another, or a second request on
the same connection (RFC 9112 §2.2: a bare CR or LF inside a field is an error); any other control
character, a space or a non-ASCII byte has no place in an API key or token either. Such a secret is refused
where it enters (the config, an OAuth credentials file, a token endpoint's answer), naming where it came
from and never the value. Fails closed.
"""

from __future__ import annotations

import hashlib
import re

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


# -- naming credentials -----------------------------------------------------------------------------------


def fingerprint(secret: str) -> str:
    """A stable, non-reversible name for a secret: tells credentials apart, useless to an attacker.

    Same form as the `credential` column of `calls` and `rate_limits`, so the tables join on it.
    """
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def describe_reference(field_name: str, reference: str) -> str:
    """The display label of a configured secret: `keys[0] env:ANTHROPIC_KEY_1`, or `keys[0] (inline)`
    for a literal, whose text is the secret itself."""
    if reference.startswith(("env:", "file:")):
        return f"{field_name} {reference}"
    return f"{field_name} (inline)"


# Runs of token characters long enough to be a credential. Provider messages are short prose; OpenAI's
# 401 echoes a masked key, and a careless proxy in between could echo more.
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_\-]{24,}")
# A reason kept in a row or an event: one line of a table, not a provider's whole error body.
REASON_MAX_CHARS = 300


def scrub(text: str, limit: int = REASON_MAX_CHARS) -> str:
    """`text` on one line, with anything token-shaped cut to its first 6 characters, characters a terminal
    would act on (escapes, bells) written out as escapes (`\\x1b`), and at most `limit` characters."""
    printable = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in " ".join(text.split()))
    cleaned = _TOKEN_LIKE.sub(lambda match: match.group()[:6] + "…", printable)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
