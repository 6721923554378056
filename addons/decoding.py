"""Incremental content-decoding for the metering tee.

mitmproxy hands a stream callable the bytes as they came off the wire, still gzip/br/zstd encoded (it only
decodes whole bodies). The client gets those bytes untouched; this decoder produces a decoded copy, chunk by
chunk, for the usage parser. RFC 9110 §8.4: codings are listed in the order they were applied.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import brotli
import zstandard

Step = Callable[[bytes], bytes]


class StreamDecoder:
    def __init__(self, steps: list[Step]) -> None:
        self._steps = steps

    def decode(self, chunk: bytes) -> bytes:
        for step in self._steps:
            chunk = step(chunk)
        return chunk


def _gzip() -> Step:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress


def _deflate() -> Step:
    # "deflate" is meant to be zlib-wrapped (RFC 9110 §8.4.1.2) but some servers send raw deflate.
    state: dict[str, zlib._Decompress] = {}

    def step(chunk: bytes) -> bytes:
        if "d" not in state:
            state["d"] = zlib.decompressobj(zlib.MAX_WBITS if chunk[:1] == b"\x78" else -zlib.MAX_WBITS)
        return state["d"].decompress(chunk)

    return step


def _brotli() -> Step:
    return brotli.Decompressor().process


def _zstd() -> Step:
    return zstandard.ZstdDecompressor().decompressobj().decompress


_CODINGS: dict[str, Callable[[], Step]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}


def make_decoder(content_encoding: str) -> StreamDecoder:
    """A decoder for a Content-Encoding header value; raises ValueError for a coding it cannot undo."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    steps: list[Step] = []
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding not in _CODINGS:
            raise ValueError(f"unsupported content-encoding {coding!r}")
        steps.append(_CODINGS[coding]())
    return StreamDecoder(steps)
