"""Naming sluice's threads where the operating system shows them (`top -H`, `ps -L`, /proc/PID/task/*/comm).

Python names a thread only for itself; Linux shows every thread of the proxy as `mitmdump`. A thread that
names itself at its start (`name_this_thread`) can be told apart there, and the benchmark measures its CPU
on its own (bench/processes.py). Elsewhere, and where the call fails, nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_PR_SET_NAME = 15
_MAX_NAME = 15  # bytes; the kernel keeps 16 with the terminating NUL


def name_this_thread(name: str) -> None:
    """Give the calling thread `name` (cut to 15 bytes) as the operating system shows it; Linux only."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:_MAX_NAME]), 0, 0, 0)
    except (OSError, AttributeError):
        return  # no libc to ask: the thread keeps the process's name
