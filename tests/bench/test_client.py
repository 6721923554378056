"""The load generator sends the same request to every proxy: to a forward proxy through a CONNECT tunnel as
Claude Code does, to a base-URL proxy (`--peers`) as an SDK pointed at that base URL does."""

from __future__ import annotations

import pytest

from bench.client import base_url_head, request_head
from bench.processes import BenchError

HEADERS = [
    ("host", "api.anthropic.com"),
    ("x-api-key", "sk-ant-client"),
    ("x-host-note", "api.anthropic.com"),
]


def test_a_base_url_proxy_gets_the_path_under_its_prefix_and_its_own_host() -> None:
    head = request_head("/v1/messages?beta=true&bench=paced", HEADERS, 42)
    moved = base_url_head(head, "/anthropic", "127.0.0.1:4000")
    assert moved == (
        b"POST /anthropic/v1/messages?beta=true&bench=paced HTTP/1.1\r\n"
        b"host: 127.0.0.1:4000\r\n"
        b"x-api-key: sk-ant-client\r\n"
        b"x-host-note: api.anthropic.com\r\n"  # only the host header changes
        b"content-length: 42\r\n\r\n"
    )


def test_a_head_for_another_host_or_in_absolute_form_is_refused() -> None:
    other = request_head("/v1/messages", [("host", "bedrock-runtime.us-east-1.amazonaws.com")], 0)
    with pytest.raises(BenchError, match="names no host"):
        base_url_head(other, "/anthropic", "127.0.0.1:4000")
    absolute = request_head("https://api.anthropic.com/v1/messages", HEADERS, 0)
    with pytest.raises(BenchError, match="origin-form"):
        base_url_head(absolute, "/anthropic", "127.0.0.1:4000")
