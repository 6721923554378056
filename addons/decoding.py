"""Content-decoding with a cap on output, in slices: what sluice reads of a compressed body is bounded.

mitmproxy hands a stream callable the bytes as they came off the wire, still gzip/br/zstd encoded, and its
own `Message.content` decodes a whole body with no limit: a 1 MB gzip body of zeros becomes 1 GB in memory.
sluice never calls it on a body a client or upstream sent. Instead every body it reads is decoded here:

- at most `limit` bytes of output (the `sluice_decode_max` option) per body; past it the decoder raises
  `OverLimit`, and the caller forwards the bytes untouched and unread, and says why on the call's row;
- at most about `max_bytes` of output per `read()`, so a stream's decoded copy can be parsed a slice at a
  time, between other flows' turns on the event loop, however much one wire chunk expands.

Each coding's own output bound is used: zlib's `max_length` (gzip, deflate), brotli's
`output_buffer_limit`; zstandard's decompressobj has none, so its input is fed in slices small enough that
one slice cannot expand past the bound (a zstd frame expands at most ~32,000x per input byte), with the
window capped at 8 MiB (RFC 9659). RFC 9110 §8.4: codings are listed in the order they were applied.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import brotli
import zstandard
from mitmproxy import http

from addons import mitm_internals

DEFAULT_DECODE_MAX = 32 * 1024 * 1024
READ_SLICE = 1024 * 1024  # decoded bytes per read() when the caller asks for everything
# Whole bodies at least this large, or compressed (a few bytes may decode to the cap), are read on a worker
# thread (the rewrite, the meter): parsing and writing back 2 MB takes ~25 ms of CPU, which on the event loop
# would stall every other flow, while off it the interpreter hands the loop the GIL back at least every
# switch interval (5 ms). Smaller bodies stay on the loop: a thread hop costs more than reading them.
OFF_LOOP_BYTES = 256 * 1024
# RFC 9659 §2: a zstd decoder for HTTP needs no window over 8 MB; a frame asking for more is refused
# (a larger window is memory the proxy would allocate on the upstream's say-so).
ZSTD_MAX_WINDOW = 8 * 1024 * 1024
ZSTD_MAX_RATIO = 32 * 1024  # output bytes one input byte of zstd can become (128 KiB RLE block in ~4 bytes)

_limit = DEFAULT_DECODE_MAX


def set_decode_max(limit: int) -> None:
    """The process-wide cap (the `sluice_decode_max` option); addons/meter.py sets it on configure."""
    global _limit
    _limit = max(0, int(limit))


def decode_max() -> int:
    return _limit


class DecodeError(ValueError):
    """The body is not valid in the coding its Content-Encoding names."""


class OverLimit(ValueError):
    """Decoding the body would produce more than the cap; nothing past the cap was produced."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"decoded body over {limit} bytes")
        self.limit = limit


class _Stage:
    """One coding undone: input fed in, output read out a bounded slice at a time."""

    def __init__(self) -> None:
        self.produced = 0
        self._input = b""

    def feed(self, data: bytes) -> None:
        self._input = self._input + data if self._input else bytes(data)

    def read(self, max_bytes: int) -> bytes:
        raise NotImplementedError

    @property
    def pending(self) -> bool:
        return bool(self._input)


class _Zlib(_Stage):
    def __init__(self, gzip: bool) -> None:
        super().__init__()
        self._gzip = gzip
        self._d: zlib._Decompress | None = None

    def read(self, max_bytes: int) -> bytes:
        if not self._input:
            return b""
        if self._d is None:
            self._d = zlib.decompressobj(self._wbits(self._input))
        try:
            out = self._d.decompress(self._input, max_bytes)
        except zlib.error as e:
            raise DecodeError(f"{'gzip' if self._gzip else 'deflate'}: {e}") from None
        self._input = self._d.unconsumed_tail
        if self._d.eof:
            rest = self._d.unused_data
            self._d = None
            # gzip members may be concatenated (RFC 1952 §2.2); anything after a deflate stream is ignored.
            self._input = rest if self._gzip and rest.strip(b"\x00") else b""
        self.produced += len(out)
        return out

    def _wbits(self, head: bytes) -> int:
        if self._gzip:
            return 16 + zlib.MAX_WBITS
        # "deflate" is meant to be zlib-wrapped (RFC 9110 §8.4.1.2) but some servers send raw deflate.
        return zlib.MAX_WBITS if head[:1] == b"\x78" else -zlib.MAX_WBITS


class _Brotli(_Stage):
    def __init__(self) -> None:
        super().__init__()
        self._d = brotli.Decompressor()
        self._full = False  # the last read filled its bound: the decompressor may hold more output

    def read(self, max_bytes: int) -> bytes:
        if not self._input and not self._full:
            return b""
        # While output is held back, brotli takes only empty input (its `process` contract).
        data = b"" if self._full or not self._d.can_accept_more_data() else self._input
        if data:
            self._input = b""
        try:
            out: bytes = self._d.process(data, output_buffer_limit=max_bytes)
        except brotli.error as e:
            raise DecodeError(f"br: {e}") from None
        self._full = len(out) >= max_bytes and not self._d.is_finished()
        self.produced += len(out)
        return out

    @property
    def pending(self) -> bool:
        return bool(self._input) or self._full


class _Zstd(_Stage):
    def __init__(self) -> None:
        super().__init__()
        self._d = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()

    def read(self, max_bytes: int) -> bytes:
        # No output bound in the API: feed slices that cannot expand past max_bytes.
        step = max(16, max_bytes // ZSTD_MAX_RATIO)
        parts: list[bytes] = []
        size = 0
        while self._input and size < max_bytes:
            data, self._input = self._input[:step], self._input[step:]
            try:
                out = self._d.decompress(data)
            except zstandard.ZstdError as e:
                raise DecodeError(f"zstd: {e}") from None
            if self._d.eof and self._d.unused_data:
                # A new frame after the first: zstandard's decompressobj reads one frame.
                self._input = self._d.unused_data + self._input
                self._d = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()
            parts.append(out)
            size += len(out)
        self.produced += size
        return b"".join(parts)


_CODINGS: dict[str, Callable[[], _Stage]] = {
    "gzip": lambda: _Zlib(gzip=True),
    "x-gzip": lambda: _Zlib(gzip=True),
    "deflate": lambda: _Zlib(gzip=False),
    "br": _Brotli,
    "zstd": _Zstd,
}


class StreamDecoder:
    """Undoes a body's codings incrementally: `feed()` wire bytes, `read()` decoded slices.

    Raises OverLimit once the decoded output (or any intermediate coding's) would pass `limit`, and
    DecodeError for bytes that are not valid in their coding. With no coding (identity) the bytes pass
    through unchanged and uncounted: they cost no more to read than they cost to send.
    """

    def __init__(self, stages: list[_Stage], limit: int | None = None) -> None:
        self._stages = stages
        self.limit = decode_max() if limit is None else limit
        self._plain: list[bytes] = []
        self.over = False

    @property
    def identity(self) -> bool:
        return not self._stages

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._stages:
            self._stages[0].feed(chunk)
        else:
            self._plain.append(bytes(chunk))

    @property
    def pending(self) -> bool:
        if not self._stages:
            return bool(self._plain)
        return not self.over and any(stage.pending for stage in self._stages)

    def read(self, max_bytes: int = READ_SLICE) -> bytes:
        """Up to about `max_bytes` of decoded output (brotli may give up to twice that); b"" when the
        input fed so far is used up."""
        if not self._stages:
            data = b"".join(self._plain)
            self._plain = []
            return data
        if self.over:
            raise OverLimit(self.limit)
        return self._pull(len(self._stages) - 1, max(1, max_bytes))

    def decode(self, chunk: bytes) -> bytes:
        """Everything `chunk` decodes to (up to the cap): feed and read until the input is used up."""
        self.feed(chunk)
        parts = [self.read()]
        while self.pending:
            parts.append(self.read())
        return b"".join(parts)

    def _pull(self, index: int, max_bytes: int) -> bytes:
        stage = self._stages[index]
        while True:
            # Never more than one byte past the cap: that byte is what tells "over" from "exactly at".
            room = self.limit - stage.produced + 1
            out = stage.read(min(max_bytes, room))
            if stage.produced > self.limit:
                self.over = True
                raise OverLimit(self.limit)
            if out or stage.pending or index == 0:
                return out
            upstream = self._pull(index - 1, max_bytes)
            if not upstream:
                return b""
            stage.feed(upstream)


def make_decoder(content_encoding: str, limit: int | None = None) -> StreamDecoder:
    """A decoder for a Content-Encoding header value; raises ValueError for a coding it cannot undo."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    stages: list[_Stage] = []
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding not in _CODINGS:
            raise ValueError(f"unsupported content-encoding {coding!r}")
        stages.append(_CODINGS[coding]())
    return StreamDecoder(stages, limit)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A whole body decoded: `body`, or None and `reason` (over the cap, not decodable, unknown coding)."""

    body: bytes | None
    reason: str | None = None


def decode_body(raw: bytes, content_encoding: str | None, limit: int | None = None) -> Decoded:
    """A buffered body decoded with the cap (a body without a coding is held to it too: parsing it would
    cost several times its size); never raises on what the body holds."""
    try:
        decoder = make_decoder(content_encoding or "", limit)
    except ValueError as e:
        return Decoded(None, str(e))
    if decoder.identity:
        return Decoded(raw) if len(raw) <= decoder.limit else Decoded(None, str(OverLimit(decoder.limit)))
    decoder.feed(raw)
    out = bytearray()
    try:
        while decoder.pending:
            out += decoder.read()
    except OverLimit as e:
        return Decoded(None, str(e))
    except DecodeError as e:
        return Decoded(None, f"body could not be decoded: {e}")
    return Decoded(bytes(out))


def is_encoded(content_encoding: str | None) -> bool:
    return (content_encoding or "").strip().lower() not in ("", "identity")


def readable_body(message: http.Message, limit: int | None = None) -> bytes:
    """A message's body decoded with the cap (or the smaller `limit`: what the reader can use at most), or
    b"" when it is over it or cannot be decoded: for a reader that only looks for something in it (an error
    message), never for bytes to forward."""
    raw, coding = message.raw_content or b"", message.headers.get("content-encoding")
    cap = decode_max() if limit is None else min(limit, decode_max())
    return decode_body(raw, coding, cap).body or b""


# --- mitmproxy's own decoding ------------------------------------------------------------------------------

_BOUNDED_CODINGS = frozenset({"gzip", "deflate", "br", "zstd"})


def bound_mitmproxy_decoding() -> None:
    """Put the cap on mitmproxy's `Message.content` too: what mitmweb's views, the console and exports
    decode. A body over the cap is then "cannot decode" there (mitmproxy shows the raw bytes instead)."""
    mitm_internals.wrap_content_decoding(_capped_decode)


def _capped_decode(original: Callable[..., object]) -> Callable[..., object]:
    def decode(encoded: object, encoding: str, errors: str = "strict") -> object:
        coding = encoding.strip().lower() if isinstance(encoding, str) else ""
        if not isinstance(encoded, bytes) or coding not in _BOUNDED_CODINGS:
            return original(encoded, encoding, errors)
        try:
            return make_decoder(coding).decode(encoded)
        except OverLimit as e:
            raise ValueError(f"{e}: not decoded (sluice_decode_max)") from None
        except DecodeError:
            # Not valid as sluice reads it: mitmproxy's own reading decides (within the cap, since
            # sluice's decoder stopped below it).
            return original(encoded, encoding, errors)

    return decode
