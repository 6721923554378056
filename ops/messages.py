"""What the proxy sends the ops process, and how: length-prefixed pickle frames on the process's stdin.

The pipe is private to the two processes (the proxy starts the ops process and holds the only writing end),
so pickle is safe here and cheap: a batch of rows costs a few microseconds a row to write.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass, field
from typing import IO, Any

from rules.config import Alert

_LENGTH = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024  # a frame longer than this is a bug on the writing side, not a batch


@dataclass(frozen=True, slots=True)
class Finished:
    """One finished call as the ops parts see it: its row, and what the row does not hold."""

    row: Any  # the `calls` row (a mapping): read only
    request_model: str | None
    response_model: str | None
    traceparent: str | None
    tracestate: str | None
    started: float  # epoch seconds
    request_json: Any  # the body as it went upstream (for opted-in content export), else None


@dataclass(frozen=True, slots=True)
class Backlog:
    queued: int = 0  # records waiting for the proxy's writer thread
    held: int = 0  # records held in memory because the database refuses them


@dataclass(frozen=True, slots=True)
class AlertTarget:
    """One `[[alerts]]` entry with its URL resolved (a secret: never logged, never stored)."""

    config: Alert
    url: str


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the ops process is told once, at its start (a change of any of it starts a new one)."""

    db_path: str
    poll_s: float
    metrics_address: str | None = None  # as the operator wrote it, for the log
    metrics_fd: int | None = None  # the listening socket the proxy bound (so a bad address fails there)
    otlp_endpoint: str | None = None
    otlp_content: bool = False
    alerts: tuple[AlertTarget, ...] = ()


@dataclass(frozen=True, slots=True)
class Tick:
    """The calls finished since the last tick, and the proxy's own figures at this moment."""

    calls: list[Finished] = field(default_factory=list)
    backlog: Backlog = Backlog()
    dropped: int = 0  # calls the proxy left out so far because the ops process was behind


STOP = "stop"


def write_frame(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream (the proxy closed the pipe or exited)."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    if length > MAX_FRAME:
        raise ValueError(f"ops: a frame of {length} bytes from the proxy; refusing it")
    data = stream.read(length)
    if len(data) < length:
        return None
    return pickle.loads(data)


@dataclass(slots=True)
class Status:
    """The ops process's view of the proxy's figures (from the latest tick) and its own poll count."""

    backlog: Backlog = Backlog()
    dropped: int = 0
    polls: int = 0  # snapshots read so far: how fresh the gauges and state alerts are
