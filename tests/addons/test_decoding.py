import gzip
import zlib

import brotli
import pytest
import zstandard
from mitmproxy import http

from addons.decoding import OverLimit, decode_body, decode_max, make_decoder, readable_body, set_decode_max

PAYLOAD = b"event: ping\ndata: {}\n\n" * 200


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("", lambda b: b),
        ("identity", lambda b: b),
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("zstd", lambda b: zstandard.ZstdCompressor().compress(b)),
        ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),
    ],
)
def test_decodes_chunk_by_chunk(coding, encode):
    wire = encode(PAYLOAD)
    decoder = make_decoder(coding)
    out = b"".join(decoder.decode(wire[i : i + 7]) for i in range(0, len(wire), 7))
    assert out == PAYLOAD


def test_raw_deflate_is_accepted():
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    wire = compressor.compress(PAYLOAD) + compressor.flush()
    assert make_decoder("deflate").decode(wire) == PAYLOAD


def test_unknown_coding_is_refused():
    with pytest.raises(ValueError, match="compress"):
        make_decoder("compress")


# --- the cap on output ------------------------------------------------------------------------------------

BOMB_SIZE = 256 * 1024 * 1024  # zeros: a few hundred bytes to a few hundred KB on the wire
CAP = 4 * 1024 * 1024

_ENCODERS = {
    "gzip": lambda b: gzip.compress(b, compresslevel=9),
    "deflate": lambda b: zlib.compress(b, 9),
    "br": lambda b: brotli.compress(b, quality=5),
    "zstd": lambda b: zstandard.ZstdCompressor(level=19).compress(b),
}


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    zeros = bytes(BOMB_SIZE)
    return {coding: encode(zeros) for coding, encode in _ENCODERS.items()}


@pytest.mark.parametrize("coding", sorted(_ENCODERS))
def test_a_bomb_is_refused_at_the_cap_without_decoding_it(coding, bombs):
    decoded = decode_body(bombs[coding], coding, limit=CAP)
    assert decoded.body is None
    assert decoded.reason == f"decoded body over {CAP} bytes"


@pytest.mark.parametrize("coding", sorted(_ENCODERS))
def test_a_streamed_bomb_is_read_in_bounded_slices_until_the_cap(coding, bombs):
    decoder = make_decoder(coding, limit=CAP)
    decoder.feed(bombs[coding])
    seen = 0
    with pytest.raises(OverLimit):
        while decoder.pending:
            piece = decoder.read(256 * 1024)
            assert len(piece) <= 2 * 256 * 1024  # brotli's buffer may grow to twice the bound
            seen += len(piece)
    assert seen <= CAP
    assert not decoder.pending


@pytest.mark.parametrize("coding", sorted(_ENCODERS))
def test_a_body_exactly_at_the_cap_is_decoded(coding):
    body = b"x" * CAP
    assert decode_body(_ENCODERS[coding](body), coding, limit=CAP).body == body
    assert decode_body(_ENCODERS[coding](body + b"y"), coding, limit=CAP).body is None


def test_stacked_codings_are_capped_too():
    wire = brotli.compress(gzip.compress(bytes(64 * 1024 * 1024)))
    assert decode_body(wire, "gzip, br", limit=CAP).reason == f"decoded body over {CAP} bytes"


def test_concatenated_gzip_members_are_one_body():
    wire = gzip.compress(b"first ") + gzip.compress(b"second")
    assert decode_body(wire, "gzip").body == b"first second"


def test_zstd_frames_in_sequence_are_one_body():
    compressor = zstandard.ZstdCompressor()
    assert decode_body(compressor.compress(b"ab") + compressor.compress(b"cd"), "zstd").body == b"abcd"


def test_a_zstd_window_over_8_mib_is_refused():
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=25)
    wire = zstandard.ZstdCompressor(compression_params=params).compress(bytes(range(256)) * 200_000)
    decoded = decode_body(wire, "zstd")
    assert decoded.body is None
    assert decoded.reason is not None and "zstd" in decoded.reason


@pytest.mark.parametrize("coding", sorted(_ENCODERS))
def test_garbage_is_a_decode_error_not_an_exception(coding):
    decoded = decode_body(b"\xff" * 100 + b"not compressed at all", coding)
    assert decoded.body is None or decoded.body == b""
    if decoded.body is None:
        assert decoded.reason is not None and decoded.reason.startswith("body could not be decoded")


def test_unknown_coding_is_a_reason():
    assert decode_body(b"abc", "compress").reason == "unsupported content-encoding 'compress'"


def test_a_body_without_a_coding_is_held_to_the_cap_too():
    body = b"x" * CAP
    assert decode_body(body, "identity", limit=CAP).body == body
    assert decode_body(body, None, limit=CAP).body == body
    over = decode_body(body + b"x", None, limit=CAP)
    assert (over.body, over.reason) == (None, f"decoded body over {CAP} bytes")


def test_the_process_wide_cap_is_the_default():
    before = decode_max()
    try:
        set_decode_max(1000)
        assert decode_body(gzip.compress(bytes(1001)), "gzip").body is None
        assert decode_body(gzip.compress(bytes(1000)), "gzip").body == bytes(1000)
    finally:
        set_decode_max(before)


def gzipped(body: bytes) -> http.Response:
    response = http.Response.make(429, b"", {"content-encoding": "gzip"})
    response.raw_content = gzip.compress(body)  # as it came off the wire
    return response


def test_a_reader_decodes_only_as_much_as_it_can_use() -> None:
    envelope = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    small = gzipped(envelope)
    assert readable_body(small, 64 * 1024) == envelope
    big = gzipped(b" " * (1024 * 1024))
    assert readable_body(big, 64 * 1024) == b""  # past what the reader uses: not decoded to the end
    assert len(readable_body(big)) == 1024 * 1024  # the process-wide cap is 32 MiB
    previous = decode_max()
    set_decode_max(1024)
    try:
        assert readable_body(small, 64 * 1024) == envelope
        assert readable_body(http.Response.make(429, b"x" * 2048), 64 * 1024) == b""  # never over the cap
    finally:
        set_decode_max(previous)
