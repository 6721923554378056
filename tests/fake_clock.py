"""A clock that stands still until a test moves it (state/clock.py's `Clock`): the tests of the credential
pool and the OAuth store make cooldowns, leases, expiries and backoffs pass by moving it, never by
sleeping."""

from __future__ import annotations

NOW = 1_800_000_000.0  # 2027-01-15: an epoch time where a stored time can be told from a monotonic one


class FakeClock:
    """Both readings move together, as real time does: `advance` is time passing, for the wall clock and the
    monotonic one alike. `now` is the wall-clock reading."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now
        self._monotonic = 1_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._monotonic += seconds

    def set_wall(self, now: float) -> None:
        """The wall clock set by NTP or a person, forward or back: monotonic time does not move."""
        self.now = now
