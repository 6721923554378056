from __future__ import annotations

import time

from state.clock import SYSTEM_CLOCK


def test_the_system_clock_reads_the_wall_clock_and_the_monotonic_one():
    before, wall, after = time.time(), SYSTEM_CLOCK.time(), time.time()
    assert before <= wall <= after
    before, monotonic, after = time.monotonic(), SYSTEM_CLOCK.monotonic(), time.monotonic()
    assert before <= monotonic <= after
