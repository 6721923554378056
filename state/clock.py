"""The clocks the credential pool and the OAuth store read, injected so that tests move time instead of
waiting.

Two readings, for two jobs, and each use names the one it needs:

- `time()`, wall-clock epoch seconds, for every time that is stored or compared with another process's:
  when a cooldown ends, when a refresh lease lapses, when a token expires (providers write expiry as epoch
  time), when a conversation was last on a credential, when an event happened. Another process, or this one
  after a restart, compares these with its own clock, and only the wall clock is common to them.
- `monotonic()`, for intervals this process measures for itself and never stores: how old its in-memory
  view of the pool or of a token is, how long it backs off after a failed refresh, how long it waits for
  another process's refresh. A wall clock set back (NTP, a person) would stretch these or cut them short.
"""

from __future__ import annotations

import time
from typing import Final, Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock epoch seconds: for times that are stored or shared between processes."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start, never set back: for intervals this process keeps to itself."""
        ...


class SystemClock:
    """The real clocks, `time.time` and `time.monotonic`."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Final[Clock] = SystemClock()
