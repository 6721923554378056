import gzip
import zlib

import brotli
import pytest
import zstandard

from addons.decoding import make_decoder

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
