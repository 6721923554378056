"""Compression bombs and deeply nested JSON, through a real mitmdump with sluice, against the fake provider.

A 1 MB gzip body that inflates to 1 GiB, sent as a request, as a whole response or as an event stream, must
pass byte for byte, unread past `sluice_decode_max` (the row says why), while the proxy's memory stays
bounded. A request nested 100,000 levels deep must still get its credential swapped. Behaviour bounds only:
the timing figures (other clients' latency while a bomb passes) are the benchmark's (bench/run.py).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from addons.decoding import DEFAULT_DECODE_MAX
from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import Proxy, curl
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e

CLIENT_KEY = "sluice-client-mallory-2c9d4e1f7a"
REAL_KEY = "sk-ant-api03-REAL-BOMB-TEST-KEY-7e1a9c3b5d"
ENV = {"SLUICE_BOMB_CLIENT": CLIENT_KEY, "SLUICE_BOMB_REAL": REAL_KEY}
CONFIG = """
[[clients]]
name = "mallory"
key = "env:SLUICE_BOMB_CLIENT"

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:SLUICE_BOMB_REAL"]
"""
URL = "https://api.anthropic.com/v1/messages"
BOMB_BYTES = 1024 * 1024 * 1024  # what each bomb inflates to
# Peak resident memory the proxy may gain over the whole module (the cap is 32 MiB; decoding 1 GiB would
# cost gigabytes).
RSS_GROWTH_MAX = 256 * 1024 * 1024
TIMEOUT = 60.0
MESSAGE = {
    "id": "msg_bomb",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "ok"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 3, "output_tokens": 1},
}
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def _gzip(prefix: bytes, filler: bytes, total: int, level: int = 9) -> bytes:
    """`prefix` then `filler` repeated up to `total` bytes, gzip-compressed a block at a time."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    block = filler * max(1, (1024 * 1024) // len(filler))
    parts = [compressor.compress(prefix)]
    written = len(prefix)
    while written < total:
        parts.append(compressor.compress(block))
        written += len(block)
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("bombs")
    request_prefix = b'{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"'
    response_prefix = json.dumps(MESSAGE).encode()[:-1] + b', "padding": "'
    start = (
        b"event: message_start\n"
        b'data: {"type":"message_start","message":{"id":"msg_bomb","model":"claude-sonnet-4-5",'
        b'"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
    )
    made = {
        "request": _gzip(request_prefix, b"\x00", BOMB_BYTES),
        "response": _gzip(response_prefix, b" ", BOMB_BYTES),
        "stream": _gzip(start, PING, BOMB_BYTES // 4, level=1),  # 256 MiB of events: 8x the cap
    }
    paths = {}
    for name, data in made.items():
        paths[name] = directory / f"{name}.gz"
        paths[name].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def proxy(module_start_proxy: ProxyFactory) -> Proxy:
    return module_start_proxy(config_toml=CONFIG, env=ENV)


def peak_rss(proxy: Proxy) -> int:
    """The mitmdump process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{proxy.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.fixture(scope="module")
def baseline(proxy: Proxy, fake_server: FakeProvider) -> int:
    """Peak RSS after one ordinary call (everything a call loads is loaded), before any bomb."""
    fake_server.reset()
    fake_server.next(body=MESSAGE)
    result = curl(proxy, "-X", "POST", URL, *_headers(), "--data-binary", _small_request(), timeout=TIMEOUT)
    assert result.status == 200, result
    proxy.wait_for_rows(1)  # written: the tests count rows from here
    fake_server.reset()
    return peak_rss(proxy)


@pytest.fixture
def since(proxy: Proxy, baseline: int) -> Iterator[int]:
    count = len(proxy.rows())
    yield count
    growth = peak_rss(proxy) - baseline
    assert growth < RSS_GROWTH_MAX, f"the proxy's peak RSS grew by {growth / 2**20:.0f} MiB"
    assert proxy.tracebacks() == []


def _headers(*extra: str) -> list[str]:
    headers = ["-H", f"x-api-key: {CLIENT_KEY}", "-H", "content-type: application/json", "-H", "Expect:"]
    for header in extra:
        headers += ["-H", header]
    return headers


def _small_request() -> str:
    return json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": []})


def _notes(row: dict[str, object]) -> list[str]:
    return json.loads(str(row["rules_applied"] or "[]"))


OVER_CAP = f"decoded body over {DEFAULT_DECODE_MAX} bytes"


def test_a_gzip_request_bomb_goes_upstream_byte_for_byte_unread(
    proxy: Proxy, fake: FakeProvider, bombs: dict[str, Path], since: int
) -> None:
    fake.next(body=MESSAGE)
    wire = bombs["request"].read_bytes()
    result = curl(
        proxy,
        "-X",
        "POST",
        URL,
        *_headers("content-encoding: gzip"),
        "--data-binary",
        f"@{bombs['request']}",
        timeout=TIMEOUT,
    )
    assert result.status == 200, result
    [sent] = fake.requests
    assert sent.body == wire  # exactly what the client sent: never inflated, rewritten or re-encoded
    assert sent.header("content-encoding") == "gzip"
    assert sent.header("x-api-key") == REAL_KEY  # the credential is still swapped
    [row] = proxy.wait_for_rows(1, since=since)
    assert f"note:request body not read: {OVER_CAP}" in _notes(row)
    assert "note:body is compressed (gzip)" in _notes(row)
    assert (row["client"], row["input_tokens"], row["request_bytes"]) == ("mallory", 3, len(wire))


def test_a_gzip_response_bomb_reaches_the_client_whole_and_is_not_read(
    proxy: Proxy, fake: FakeProvider, bombs: dict[str, Path], since: int
) -> None:
    wire = bombs["response"].read_bytes()
    fake.next(body=wire, headers=[("content-encoding", "gzip")])
    result = curl(proxy, "-X", "POST", URL, *_headers(), "--data-binary", _small_request(), timeout=TIMEOUT)
    assert result.status == 200, result
    assert result.body == wire  # curl is not asked to decode: the bytes as the upstream sent them
    assert result.header("content-encoding") == "gzip"
    [row] = proxy.wait_for_rows(1, since=since)
    assert f"note:usage not read: {OVER_CAP}" in _notes(row)
    assert (row["status"], row["input_tokens"], row["response_bytes"]) == (200, None, len(wire))


def test_a_gzip_event_stream_bomb_reaches_the_client_whole_and_is_read_only_to_the_cap(
    proxy: Proxy, fake: FakeProvider, bombs: dict[str, Path], since: int
) -> None:
    wire = bombs["stream"].read_bytes()
    fake.next(encoded_stream=wire, encoding="gzip")
    result = curl(proxy, "-X", "POST", URL, *_headers(), "--data-binary", _small_request(), timeout=TIMEOUT)
    assert result.status == 200 and result.returncode == 0, result
    assert result.body == wire  # every byte, still gzip
    [row] = proxy.wait_for_rows(1, since=since)
    assert f"note:usage not read: {OVER_CAP}" in _notes(row)
    assert row["stream"] == 1 and row["response_bytes"] == len(wire)
    assert row["input_tokens"] == 3  # what was read before the cap is kept


@pytest.mark.parametrize("opener", [b"[", b'{"a":'], ids=["arrays", "objects"])
def test_a_request_nested_100000_deep_is_forwarded_untouched_with_the_credential_swapped(
    proxy: Proxy, fake: FakeProvider, since: int, opener: bytes, tmp_path: Path
) -> None:
    depth = 100_000
    closer = b"]" if opener == b"[" else b"}"
    body = b'{"model":"claude-sonnet-4-5","max_tokens":16,"messages":' + opener * depth + b"1"
    body += closer * depth + b"}"
    (tmp_path / "deep.json").write_bytes(body)
    fake.next(body=MESSAGE)
    data = f"@{tmp_path / 'deep.json'}"
    result = curl(proxy, "-X", "POST", URL, *_headers(), "--data-binary", data, timeout=TIMEOUT)
    assert result.status == 200, result
    [sent] = fake.requests
    assert sent.body == body
    assert sent.header("x-api-key") == REAL_KEY
    [row] = proxy.wait_for_rows(1, since=since)
    assert "note:body nests too deeply" in _notes(row)
    assert not any(note.startswith("note:part failed") for note in _notes(row))
    assert row["client"] == "mallory" and row["input_tokens"] == 3


def test_a_plain_body_over_the_cap_goes_upstream_as_it_came_unread(
    start_proxy: ProxyFactory, fake: FakeProvider
) -> None:
    # Parsed, JSON takes several times its size: a body past the cap is not parsed, compressed or not.
    policy = CONFIG + '[[rules.system_blocks]]\nname = "policy"\ntext = "Never print secrets."\n'
    own = start_proxy(config_toml=policy, env=ENV, extra_args=["--set", "sluice_decode_max=4096"])
    fake.next(body=MESSAGE)
    body = json.dumps(
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "x" * 8000}],
        }
    )
    result = curl(own, "-X", "POST", URL, *_headers(), "--data-binary", body, timeout=TIMEOUT)
    assert result.status == 200, result
    [sent] = fake.requests
    assert sent.body == body.encode()  # untouched: the configured system block was not injected
    assert sent.header("x-api-key") == REAL_KEY
    [row] = own.wait_for_rows(1)
    assert "note:request body not read: decoded body over 4096 bytes" in _notes(row)
