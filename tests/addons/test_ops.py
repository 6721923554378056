"""The ops feed: a call's row is only queued on the request path; the parts get it on the feed's thread."""

from __future__ import annotations

import threading
import time
from typing import Any

from mitmproxy.test import taddons, tflow

from addons.calls import Call
from addons.core import SluiceCore
from addons.ops import QUEUE_MAX, Backlog, Finished, OpsFeed
from rules.usage import Reading
from state.ops import Snapshot
from state.writer import CallRecord


class Sink:
    def __init__(self, enabled: bool = True, fail: bool = False) -> None:
        self.enabled = enabled
        self.wants_snapshot = True
        self.fail = fail
        self.calls: list[Finished] = []
        self.snapshots: list[Snapshot] = []
        self.closed = threading.Event()

    def on_call(self, finished: Finished) -> None:
        if self.fail:
            raise RuntimeError("a bug in one part")
        self.calls.append(finished)

    def on_snapshot(self, snapshot: Snapshot, backlog: Backlog) -> None:
        self.snapshots.append(snapshot)

    def close(self) -> None:
        self.closed.set()


def record(call: Call) -> CallRecord:
    return CallRecord(row={"id": call.flow_id, "model": "m"})


def a_call() -> Call:
    call = Call("f1", "api.anthropic.com", "POST", "/v1/messages", "anthropic", "messages", 1.0)
    call.request_headers = {"traceparent": "00-abc-def-01"}
    call.request_model = "claude-haiku-4-5"
    return call


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)


def test_nothing_is_queued_while_every_part_is_off() -> None:
    core = SluiceCore()
    feed = OpsFeed(core, [Sink(enabled=False)])
    with taddons.context(core, feed) as tctx:
        tctx.configure(feed)
        call = a_call()
        feed.before_record(tflow.tflow(), call, Reading(), record(call))
        assert feed.queue.qsize() == 0 and feed.thread is None


def test_parts_get_each_call_and_snapshots_on_the_feeds_thread_and_one_failing_part_costs_no_other(
    tmp_path: Any,
) -> None:
    good, bad = Sink(), Sink(fail=True)
    core = SluiceCore()
    feed = OpsFeed(core, [bad, good])
    with taddons.context(core, feed) as tctx:
        tctx.configure(feed, sluice_db=str(tmp_path / "sluice.db"), sluice_ops_poll_ms=50)
        call = a_call()
        feed.before_record(tflow.tflow(), call, Reading(model="claude-haiku-4-5-20251001"), record(call))
        wait_until(lambda: good.calls and len(good.snapshots) >= 2)
        feed.done()
    [finished] = good.calls
    assert (finished.request_model, finished.response_model) == (
        "claude-haiku-4-5",
        "claude-haiku-4-5-20251001",
    )
    assert finished.traceparent == "00-abc-def-01" and finished.request_json is None
    assert good.closed.is_set() and bad.closed.is_set() and feed.thread is None


def test_a_full_queue_drops_and_counts_never_waits() -> None:
    feed = OpsFeed(SluiceCore(), [Sink()])
    feed._active = True  # as if configured, without the thread that would drain the queue
    call = a_call()
    started = time.monotonic()
    for _ in range(QUEUE_MAX + 5):
        feed.before_record(tflow.tflow(), call, Reading(), record(call))
    assert feed.dropped == 5 and feed.queue.qsize() == QUEUE_MAX
    assert time.monotonic() - started < 5
