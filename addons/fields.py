"""Header reads and edits in one pass over mitmproxy's `Headers.fields`.

`Headers.get`, `in`, `[name] = value` and `pop` each scan (and lower-case) every field again; a provider call
carries 20-40 headers and sluice reads or sets a dozen of them per call, which adds up to a measurable share
of what sluice costs per request (bench/run.py). These helpers do the same work with one scan each.
Names are compared lower-cased, with the original casing and order kept (RFC 9110 §5.1).
"""

from __future__ import annotations

from collections.abc import Mapping

Fields = tuple[tuple[bytes, bytes], ...]

# What names a rate-limit header: every provider's families have it in their names (rules/providers:
# `Provider.window_prefix`, `counted_limits`; a test holds each to it), as do the IETF draft's `RateLimit`
# headers some gateways send. The row keeps every header named so, as it came.
RATE_LIMIT_MARKER = "ratelimit"


def header_values(fields: Fields, only: frozenset[bytes] | None = None) -> dict[str, str]:
    """Each header's first value by lower-cased name (`only` those, given lower-cased), decoded as
    mitmproxy decodes them (UTF-8, surrogate escapes)."""
    found: dict[str, str] = {}
    for name, value in fields:
        lowered = name.lower()
        if only is not None and lowered not in only:
            continue
        key = lowered.decode("utf-8", "surrogateescape")
        if key not in found:
            found[key] = value.decode("utf-8", "surrogateescape")
    return found


_MARKER = RATE_LIMIT_MARKER.encode()


def rate_limit_values(fields: Fields) -> dict[str, str]:
    """The rate-limit headers (RATE_LIMIT_MARKER) and `retry-after*`, first value by lower-cased name: the
    few a reader of an answer's limits needs, without decoding the rest."""
    found: dict[str, str] = {}
    for name, value in fields:
        lowered = name.lower()
        if _MARKER in lowered or lowered.startswith(b"retry-after"):
            key = lowered.decode("utf-8", "surrogateescape")
            if key not in found:
                found[key] = value.decode("utf-8", "surrogateescape")
    return found


def with_headers(fields: Fields, changes: Mapping[bytes, bytes | None]) -> Fields:
    """`fields` with each named header (lower-cased name) set to its value, or removed when None.

    A header that is present keeps the place and casing of its first occurrence, its other occurrences go;
    one that is not is appended, in the order of `changes`.
    """
    out: list[tuple[bytes, bytes]] = []
    done: set[bytes] = set()
    for name, value in fields:
        lowered = name.lower()
        if lowered not in changes:
            out.append((name, value))
            continue
        new = changes[lowered]
        if new is not None and lowered not in done:
            out.append((name, new))
        done.add(lowered)
    for lowered, new in changes.items():
        if new is not None and lowered not in done:
            out.append((lowered, new))
    return tuple(out)
