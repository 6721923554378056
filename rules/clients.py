"""Who is calling: the client key a request presents, matched against the configured clients.

Keys are held only as SHA-256 digests and compared in constant time against every client (no early exit),
so neither the stored form nor the timing tells an attacker anything about a key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True, slots=True)
class KnownClient:
    name: str
    key_digest: bytes
    user_id: str | None = None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The credential a request carries: `x-api-key`, else an `Authorization: Bearer` token.

    `headers` must look names up case-insensitively (mitmproxy's Headers does).
    """
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def match_client(key: str | None, clients: Iterable[KnownClient]) -> KnownClient | None:
    """The client whose key this is, or None. Fails closed: no key or an unknown key matches no one."""
    candidate = digest(key or "")
    found: KnownClient | None = None
    for client in clients:
        if hmac.compare_digest(candidate, client.key_digest) and key:
            found = client
    return found
