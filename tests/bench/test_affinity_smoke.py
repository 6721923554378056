"""The cache-affinity measurement runs end to end and reports both routings.

Only that it completes and measures what it says: which routing reads more from the cache depends on the
pool's policy and the machine, and is the measurement's report, never a test assertion.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_quick_affinity_measurement_reports_both_routings(tmp_path: Path) -> None:
    out = tmp_path / "affinity.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.affinity", "--quick", "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report = json.loads(out.read_text())
    settings = report["settings"]
    routings = report["routings"]
    assert list(routings) == ["first", "affinity"]
    for routing, figures in routings.items():
        # Every turn of every conversation is a recorded, priced call, spread over the pool's keys.
        assert figures["calls"] == settings["conversations"] * settings["turns"], routing
        assert sum(figures["calls_per_key"]) == figures["calls"]
        assert figures["usd"] > 0
        assert figures["input_tokens"] > figures["cache_read_tokens"] > 0
        assert 0 < figures["cache_read_share"] < 1
        # The churn happened: keys refused calls, and the clients saw 429s.
        assert figures["fake_429s"] > 0 and figures["client_429s"] > 0
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table] == ["| routing", "| first", "| affinity"]
