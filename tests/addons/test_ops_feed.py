"""The ops feed: a call's row is only queued on the request path; a real ops process gets it in batches,
and the options are checked in the proxy, before any process starts."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from addons import ops_feed
from addons.calls import Call
from addons.core import SluiceCore
from addons.ops_feed import QUEUE_MAX, OpsFeed
from ops.messages import Finished, Settings
from rules.usage import Reading
from state.writer import CallRecord

ROW = {"id": "f1", "provider": "anthropic", "model": "claude-haiku-4-5", "client": "alice", "status": 200}


def record(call: Call) -> CallRecord:
    return CallRecord(row={**ROW, "id": call.flow_id})


def a_call(flow_id: str = "f1") -> Call:
    call = Call(flow_id, "api.anthropic.com", "POST", "/v1/messages", "anthropic", "messages", 1.0)
    call.request_headers = {"traceparent": "00-abc-def-01"}
    call.request_model = "claude-haiku-4-5"
    return call


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def scraped_until(port: int, wanted: str, timeout: float = 30.0) -> str:
    """The first scrape that shows `wanted` (the ops process starts, then the batch arrives)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = scrape(port)
        except (urllib.error.URLError, ConnectionError):
            text = ""
        if wanted in text:
            return text
        time.sleep(0.05)
    raise AssertionError(f"{wanted!r} not scraped in {timeout}s:\n{text[-2000:]}")


@pytest.fixture
def feed(tmp_path: Path) -> Any:
    core = SluiceCore()
    feed = OpsFeed(core)
    with taddons.context(core, feed) as tctx:
        tctx.configure(core, sluice_db=str(tmp_path / "sluice.db"))
        yield feed, tctx
        feed.done()


def test_nothing_is_queued_and_no_process_runs_while_every_part_is_off(feed: Any) -> None:
    feed, tctx = feed
    tctx.configure(feed)
    call = a_call()
    feed.before_record(tflow.tflow(), call, Reading(), record(call))
    assert not feed.pending and feed.process is None and feed.settings is None


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("sluice_metrics", "localhost", "sluice_metrics: expected host:port"),
        ("sluice_otlp", "collector:4318", "sluice_otlp: expected an http"),
        ("sluice_ops_poll_ms", 10, "sluice_ops_poll_ms: at least 50 ms"),
    ],
)
def test_a_bad_option_stops_start_up_naming_it(feed: Any, option: str, value: object, message: str) -> None:
    feed, tctx = feed
    with pytest.raises(exceptions.OptionsError, match=message):
        tctx.configure(feed, **{option: value})
    assert feed.process is None


def test_a_taken_metrics_port_stops_start_up(feed: Any) -> None:
    feed, tctx = feed
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        refused = f"sluice_metrics: cannot listen on 127.0.0.1:{port}"
        with pytest.raises(exceptions.OptionsError, match=refused):
            tctx.configure(feed, sluice_metrics=f"127.0.0.1:{port}")


def test_a_webhook_that_is_not_http_stops_start_up_naming_the_entry_not_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text('[[alerts]]\nurl = "env:SLUICE_TEST_HOOK"\n')
    monkeypatch.setenv("SLUICE_TEST_HOOK", "ftp://example.invalid/SECRET")
    core = SluiceCore()
    feed = OpsFeed(core)
    with (
        taddons.context(core, feed) as tctx,
        pytest.raises(exceptions.OptionsError, match=r"alerts\[0\]\.url: must be an http") as refused,
    ):
        tctx.configure(core, sluice_config=str(config), sluice_db=str(tmp_path / "sluice.db"))
        tctx.configure(feed, sluice_config=str(config))
    assert "SECRET" not in str(refused.value)


def test_calls_reach_the_ops_process_in_batches_and_its_metrics_are_scraped(feed: Any) -> None:
    feed, tctx = feed
    port = free_port()
    tctx.configure(feed, sluice_metrics=f"127.0.0.1:{port}", sluice_ops_poll_ms=50)
    for index in range(3):
        call = a_call(f"f{index}")
        feed.before_record(tflow.tflow(), call, Reading(model="claude-haiku-4-5-20251001"), record(call))
    text = scraped_until(port, 'status_class="2xx"} 3.0')
    assert "sluice_ops_dropped_total 0.0" in text
    process = feed.process
    feed.done()
    assert process.poll() == 0  # told to stop, it finished on its own
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        scrape(port)


def test_an_ops_process_that_dies_is_started_again_on_the_same_socket(
    feed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops_feed, "RESTART_S", 0.0)
    feed, tctx = feed
    port = free_port()
    tctx.configure(feed, sluice_metrics=f"127.0.0.1:{port}")
    call = a_call()
    feed.before_record(tflow.tflow(), call, Reading(), record(call))
    scraped_until(port, "sluice_calls_total{")
    first = feed.process
    first.kill()
    first.wait()
    call = a_call("f2")
    feed.before_record(tflow.tflow(), call, Reading(), record(call))
    text = scraped_until(port, "sluice_calls_total{")  # a new process: counters start again
    assert feed.process is not first and feed.process.poll() is None
    assert "sluice_ops_dropped_total" in text


def test_the_same_options_keep_the_process_and_a_change_starts_a_new_one(feed: Any) -> None:
    feed, tctx = feed
    port = free_port()
    tctx.configure(feed, sluice_metrics=f"127.0.0.1:{port}")
    first = feed.process
    tctx.configure(feed, sluice_metrics=f"127.0.0.1:{port}", sluice_ops_poll_ms=5000)
    assert feed.process is first
    tctx.configure(feed, sluice_ops_poll_ms=100)
    assert feed.process is not first and first.poll() == 0
    assert isinstance(feed.settings, Settings) and feed.settings.poll_s == 0.1
    scraped_until(port, "sluice_ops_polls_total")  # the same socket, served by the new process


def test_a_full_queue_drops_and_counts_never_waits() -> None:
    feed = OpsFeed(SluiceCore())
    feed.settings = Settings(db_path="unused.db", poll_s=5.0)  # as if configured, with no sender draining
    call = a_call()
    started = time.monotonic()
    for _ in range(QUEUE_MAX + 5):
        feed.before_record(tflow.tflow(), call, Reading(), record(call))
    assert feed.dropped == 5 and len(feed.pending) == QUEUE_MAX
    assert time.monotonic() - started < 5
    finished = feed.pending[0]
    assert isinstance(finished, Finished) and finished.traceparent == "00-abc-def-01"
    assert finished.request_json is None  # content goes only when opted in
