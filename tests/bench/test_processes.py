"""The benchmark counts what a proxy costs the machine: its own CPU time and that of the processes it
started (sluice's ops process)."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.processes import cpu_seconds

# A parent that starts a child which spins until told to stop; the parent itself only waits.
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import sys\\nwhile not sys.stdin.closed: pass"],
                         stdin=subprocess.PIPE)
print(child.pid, flush=True)
sys.stdin.readline()
child.kill()
"""


def test_a_proxys_cpu_includes_the_processes_it_started() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        while cpu_seconds(child) < 0.3:
            assert time.monotonic() < deadline, "the child never spun"
            time.sleep(0.05)
        alone = cpu_seconds(child)
        assert cpu_seconds(parent.pid) >= alone  # measured after: the child's share has only grown
    finally:
        parent.communicate("\n", timeout=30)
