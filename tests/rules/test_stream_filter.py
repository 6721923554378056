import random

import pytest

from rules.providers.openai.request import is_usage_only_chunk
from rules.stream_filter import SSERecordFilter

USAGE_RECORD = b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n'
CHUNKS = (
    b'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}\n\n'
    b'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n'
    + USAGE_RECORD
    + b"data: [DONE]\n\n"
)
WITHOUT_USAGE = CHUNKS.replace(USAGE_RECORD, b"")


def run(splits: list[int], payload: bytes = CHUNKS) -> bytes:
    stream = SSERecordFilter(is_usage_only_chunk)
    out, last = [], 0
    for cut in [*splits, len(payload)]:
        out.append(stream.feed(payload[last:cut]))
        last = cut
    out.append(stream.close())
    return b"".join(out)


def test_drops_only_the_usage_chunk():
    assert run([]) == WITHOUT_USAGE


@pytest.mark.parametrize("seed", range(30))
def test_any_chunking_gives_the_same_bytes(seed):
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(CHUNKS)), rng.randint(1, 40)))
    assert run(cuts) == WITHOUT_USAGE


def test_complete_records_leave_at_once():
    stream = SSERecordFilter(is_usage_only_chunk)
    first = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    assert stream.feed(first + b"data: {") == first


def test_crlf_records():
    payload = CHUNKS.replace(b"\n", b"\r\n")
    assert run([len(payload) // 3], payload) == WITHOUT_USAGE.replace(b"\n", b"\r\n")


def test_unfinished_tail_is_released_at_the_end():
    assert run([], b"data: partial") == b"data: partial"
