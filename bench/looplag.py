"""Bench-only addon: how late the mitmproxy event loop runs a callback that asked to run every few ms.

Anything that holds the loop (a hook doing real work, a parser on a big body) delays every flow; a callback
that should run every `PERIOD_S` and notes how late it ran measures exactly that delay. The samples
(`loop.time()`, which is `time.monotonic()`, and the lateness in seconds) go to `bench_looplag_file` as JSON
when mitmproxy shuts down, so the benchmark can pick the ones that fall inside its load windows.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from mitmproxy import ctx

PERIOD_S = 0.005
MAX_SAMPLES = 2_000_000  # ~2.8 h at one sample per 5 ms: the list stays bounded whatever the run length

log = logging.getLogger(__name__)


class LoopLag:
    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            "bench_looplag_file",
            str,
            "",
            "Where to write the event-loop lateness samples as JSON at shutdown (empty: do not measure).",
        )

    def running(self) -> None:
        if ctx.options.bench_looplag_file and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while len(self.samples) < MAX_SAMPLES:
            due = loop.time() + PERIOD_S
            await asyncio.sleep(PERIOD_S)
            now = loop.time()
            self.samples.append((round(now, 6), round(max(0.0, now - due), 7)))

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        path = ctx.options.bench_looplag_file
        if path:
            Path(path).write_text(json.dumps({"period_s": PERIOD_S, "samples": self.samples}))
            log.info("looplag: %d samples written to %s", len(self.samples), path)


addons = [LoopLag()]
