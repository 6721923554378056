"""Who is calling: the client key a request presents, matched against the configured clients.

Keys are held only as SHA-256 digests and compared in constant time against every client (no early exit),
so neither the stored form nor the timing tells an attacker anything about a key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rules.providers import key_header_names


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True, slots=True)
class KnownClient:
    name: str
    key_digest: bytes
    user_id: str | None = None


def presented_key(headers: Mapping[str, str], query_key: str | None = None) -> str | None:
    """The credential a request carries: a key header of some provider's (`x-api-key`, `x-goog-api-key`),
    else an `Authorization: Bearer` token, else `query_key` (a key in the URL, for a provider that takes
    one there: the caller reads it).

    `headers` must look names up case-insensitively (mitmproxy's Headers does).
    """
    for name in _key_headers():
        key = headers.get(name)
        if key:
            return key.strip()
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return query_key.strip() if query_key and query_key.strip() else None


def _key_headers() -> tuple[str, ...]:
    return tuple(sorted(key_header_names() - {"authorization"}))


def match_client(key: str | None, clients: Iterable[KnownClient]) -> KnownClient | None:
    """The client whose key this is, or None. Fails closed: no key or an unknown key matches no one."""
    candidate = digest(key or "")
    found: KnownClient | None = None
    for client in clients:
        if hmac.compare_digest(candidate, client.key_digest) and key:
            found = client
    return found
