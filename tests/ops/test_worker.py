"""The ops process's loop: ticks reach every part, a failing part costs no other, the shared state is
polled on time, and the frames between the two processes round-trip."""

from __future__ import annotations

import io
import queue
import threading
from pathlib import Path

import pytest

from ops.messages import STOP, Backlog, Finished, Settings, Tick, read_frame, write_frame
from ops.worker import Worker, read_frames
from state.ops import Snapshot


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.enabled = True
        self.wants_snapshot = True
        self.fail = fail
        self.calls: list[Finished] = []
        self.snapshots: list[tuple[Snapshot, Backlog]] = []
        self.closed = False

    def on_call(self, finished: Finished) -> None:
        if self.fail:
            raise RuntimeError("a bug in one part")
        self.calls.append(finished)

    def on_snapshot(self, snapshot: Snapshot, backlog: Backlog) -> None:
        if self.fail:
            raise RuntimeError("another bug")
        self.snapshots.append((snapshot, backlog))

    def close(self) -> None:
        self.closed = True


def finished(call_id: str) -> Finished:
    return Finished({"id": call_id}, None, None, None, None, 0.0, None)


def test_a_tick_reaches_every_part_and_one_failing_part_costs_no_other(tmp_path: Path) -> None:
    good, bad = Sink(), Sink(fail=True)
    worker = Worker(Settings(db_path=str(tmp_path / "sluice.db"), poll_s=60), [bad, good])
    assert worker.handle(Tick([finished("a"), finished("b")], Backlog(4, 1), dropped=2))
    assert [call.row["id"] for call in good.calls] == ["a", "b"]
    assert (worker.status.backlog, worker.status.dropped) == (Backlog(4, 1), 2)
    worker.poll()
    [(_, backlog)] = good.snapshots
    assert backlog == Backlog(4, 1) and worker.status.polls == 1
    worker.poll()  # not due again for a minute
    assert len(good.snapshots) == 1
    assert not worker.handle(STOP)
    worker.close()
    assert good.closed and bad.closed


def test_run_polls_while_idle_and_ends_with_the_pipe(tmp_path: Path) -> None:
    sink = Sink()
    worker = Worker(Settings(db_path=str(tmp_path / "sluice.db"), poll_s=0.05), [sink])
    frames: queue.Queue[object] = queue.Queue()
    thread = threading.Thread(target=worker.run, args=(frames,))
    thread.start()
    frames.put(Tick([finished("a")]))
    while len(sink.snapshots) < 3:  # polled again and again with no calls arriving
        thread.join(0.01)
        assert thread.is_alive()
    frames.put(None)  # the proxy is gone
    thread.join(10)
    assert not thread.is_alive() and [call.row["id"] for call in sink.calls] == ["a"]


def test_frames_round_trip_and_the_end_of_the_pipe_is_none() -> None:
    stream = io.BytesIO()
    tick = Tick([finished("a")], Backlog(1, 0), 0)
    write_frame(stream, tick)
    write_frame(stream, STOP)
    stream.write(b"\x00\x00")  # a frame cut short by a proxy that died mid-write
    stream.seek(0)
    frames: queue.Queue[object] = queue.Queue()
    read_frames(stream, frames)
    assert [frames.get_nowait() for _ in range(3)] == [tick, STOP, None]


def test_a_frame_claiming_to_be_huge_is_refused() -> None:
    with pytest.raises(ValueError, match="refusing"):
        read_frame(io.BytesIO(b"\xff\xff\xff\xff" + b"x" * 10))
