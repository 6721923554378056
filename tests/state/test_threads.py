"""A thread's name as the operating system shows it (state/threads.py)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from state.threads import name_this_thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux shows thread names in /proc")
def test_a_thread_names_itself_where_top_and_proc_show_it() -> None:
    seen: dict[str, str] = {}

    def run() -> None:
        name_this_thread("sluice-writer-and-more")
        comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
        seen["comm"] = comm

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen["comm"] == "sluice-writer-a"  # cut to the 15 bytes the kernel keeps
    main = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()
    assert main != "sluice-writer-a"  # only the thread that asked
