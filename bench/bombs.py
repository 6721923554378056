"""Compression bombs for the benchmark's bomb phase: about 1 MB of gzip that inflates to `size` bytes.

Each one is valid all the way through — a reader that inflated it whole would find a Messages response, an
event stream or a request — so only a cap on decoding keeps a proxy's memory and event loop bounded:

- `response_bomb`: a whole Messages response whose JSON string member runs to `size` bytes of spaces;
- `stream_bomb`: `message_start`, then `ping` events up to `size` bytes (the usage parser's worst case: many
  tiny events), then `message_stop`;
- `request_bomb`: a Messages request whose last message's text runs to `size` bytes of spaces.

Built block by block (never `size` bytes in memory), gzip level 9 except the stream's (level 6: its events
compress less and take longer; still ~3 MB per GiB).
"""

from __future__ import annotations

import json
import zlib

BLOCK = 1024 * 1024
PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def gzip_bomb(prefix: bytes, filler: bytes, size: int, suffix: bytes = b"", level: int = 9) -> bytes:
    """gzip of `prefix`, `filler` repeated to about `size` bytes, then `suffix`."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    block = filler * max(1, BLOCK // len(filler))
    parts = [compressor.compress(prefix)]
    written = len(prefix)
    while written < size:
        parts.append(compressor.compress(block))
        written += len(block)
    parts += [compressor.compress(suffix), compressor.flush()]
    return b"".join(parts)


def response_bomb(size: int, model: str = "claude-sonnet-4-5") -> bytes:
    head = {
        "id": "msg_01bomb",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 1},
    }
    prefix = json.dumps(head, separators=(",", ":")).encode()[:-1] + b',"padding":"'
    return gzip_bomb(prefix, b" ", size, b'"}')


def stream_bomb(size: int, model: str = "claude-sonnet-4-5") -> bytes:
    message = {"id": "msg_01bomb", "type": "message", "role": "assistant", "model": model, "content": []}
    message["usage"] = {"input_tokens": 10, "output_tokens": 1}
    start = json.dumps({"type": "message_start", "message": message}, separators=(",", ":"))
    prefix = f"event: message_start\ndata: {start}\n\n".encode()
    suffix = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    return gzip_bomb(prefix, PING, size, suffix, level=6)


def request_bomb(size: int, model: str = "claude-sonnet-4-5") -> bytes:
    prefix = b'{"model":"%s","max_tokens":64,"messages":[{"role":"user","content":"' % model.encode()
    return gzip_bomb(prefix, b" ", size, b'"}]}')
