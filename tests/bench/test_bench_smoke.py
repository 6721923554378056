"""The benchmark runs end to end and reports every figure issue #7 asks for.

Only that it completes and measures: what the figures are, and whether they meet their targets, depends on
the machine and is the benchmark's report, never a test assertion.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every figure, and whether it has a bare counterpart (the in-process ones measure sluice's code alone).
FIGURES = {
    "throughput_rps": True,
    "cpu_per_request_ms": True,
    "main_cpu_per_request_ms": True,
    "writer_cpu_per_row_ms": True,
    "other_cpu_per_request_ms": True,
    "write_syscalls_per_request": True,
    "read_syscalls_per_request": True,
    "cpu_per_request_latency_ms": True,
    "cpu_per_request_agent_ms": True,
    "cpu_per_request_huge_ms": True,
    "cpu_per_request_turn1_ms": True,
    "cpu_per_request_turn20_ms": True,
    "latency_p50_ms": True,
    "latency_p99_ms": True,
    "stream1_ttfb_p50_ms": True,
    "stream1_ttfb_p99_ms": True,
    "stream1_event_p50_ms": True,
    "stream1_event_p99_ms": True,
    "stream20_ttfb_p50_ms": True,
    "stream20_ttfb_p99_ms": True,
    "stream20_event_p50_ms": True,
    "stream20_event_p99_ms": True,
    "bedrock1_event_p50_ms": True,
    "bedrock1_event_p99_ms": True,
    "cpu_per_event_us": True,
    "fleet_event_p50_ms": True,
    "fleet_event_p99_ms": True,
    "fleet_worst_stream_p99_ms": True,
    "fleet_starved_streams": True,
    "fleet_rss_per_stream_kb": True,
    "fleet_cpu_per_event_us": True,
    "bulk_rss_growth_mb": True,
    "bulk_mb_per_s": True,
    "bomb_json_rss_growth_mb": True,
    "bomb_json_others_p99_added_ms": True,
    "bomb_sse_rss_growth_mb": True,
    "bomb_sse_others_p99_added_ms": True,
    "bomb_request_rss_growth_mb": True,
    "bomb_request_others_p99_added_ms": True,
    "rewrite_agent_inprocess_ms": False,
    "agent_request_latency_p50_ms": True,
    "rewrite_huge_inprocess_ms": False,
    "huge_request_latency_p50_ms": True,
    "writer_rows_per_s": False,
    "loop_lag_p99_ms": True,
    "loop_lag_p99_saturated_ms": True,
    "loop_lag_max_huge_ms": True,
}
TARGETED = {
    "throughput_rps",
    "main_cpu_per_request_ms",
    "latency_p50_ms",
    "stream1_event_p99_ms",
    "stream20_event_p99_ms",
    "fleet_event_p99_ms",
    "fleet_starved_streams",
    "fleet_rss_per_stream_kb",
    "bedrock1_event_p99_ms",
    "bulk_rss_growth_mb",
    "bomb_json_rss_growth_mb",
    "bomb_json_others_p99_added_ms",
    "bomb_sse_rss_growth_mb",
    "bomb_sse_others_p99_added_ms",
    "bomb_request_rss_growth_mb",
    "bomb_request_others_p99_added_ms",
    "writer_rows_per_s",
    "loop_lag_p99_ms",
}


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench.run --quick ARGS` from the repository, as the README runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_quick_benchmark_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = bench("--json", str(out))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report = json.loads(out.read_text())

    assert report["mode"] == "quick"
    machine = report["machine"]
    assert machine["cpus"] and machine["python"] and machine["mitmproxy"] and machine["cpu_model"]
    figures = report["figures"]
    assert set(figures) == set(FIGURES)
    for key, has_bare in FIGURES.items():
        figure = figures[key]
        assert isinstance(figure["sluice"], int | float), (key, figure)
        if has_bare:
            assert isinstance(figure["bare"], int | float), (key, figure)
            assert isinstance(figure["ratio"], int | float) or figure["bare"] == 0, (key, figure)
        assert (figure["result"] in ("PASS", "MISS")) == (key in TARGETED), (key, figure)
    # The table went to stdout with a verdict for every target.
    assert done.stdout.count("PASS") + done.stdout.count("MISS") >= len(TARGETED)


def test_against_another_checkout_puts_its_sluice_in_bares_place(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = bench("--only", "latency", "--against", ".", "--json", str(out))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report = json.loads(out.read_text())
    assert report["baseline"] == {"path": str(REPO_ROOT), "commit": report["machine"]["sluice_commit"]}
    latency = report["figures"]["latency_p50_ms"]
    assert isinstance(latency["bare"], float) and isinstance(latency["sluice"], float)
    assert "bare column: sluice" in done.stdout
    assert all(figure["result"] is None for figure in report["figures"].values())  # targets are over bare


def test_against_a_folder_without_sluice_is_refused(tmp_path: Path) -> None:
    done = bench("--against", str(tmp_path))
    assert done.returncode == 2 and "no addons/sluice.py" in done.stderr


def test_ops_puts_this_sluice_without_metrics_and_tracing_in_bares_place(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = bench("--only", "latency", "--ops", "--json", str(out))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report = json.loads(out.read_text())
    ops = report["ops"]
    assert ops["parts"] == "both"
    assert ops["otlp_posts"].get("/v1/traces", 0) >= 1 and ops["otlp_bytes"] > 0  # the spans really left
    assert ops["metrics_bytes"] > 0 and "bare column: this sluice with metrics and tracing off" in done.stdout
    latency = report["figures"]["latency_p50_ms"]
    assert isinstance(latency["bare"], float) and isinstance(latency["sluice"], float)
    assert all(figure["result"] is None for figure in report["figures"].values())


def test_ops_and_against_are_not_given_together() -> None:
    done = bench("--ops", "--against", ".")
    assert done.returncode == 2 and "give one" in done.stderr


def test_peers_puts_litellm_beside_bare_and_sluice(tmp_path: Path) -> None:
    """Only where LiteLLM is installed already (a first `--peers` run installs it from PyPI): the suite needs
    neither it nor the network."""
    from bench.peers import INSTALLED_MARK, PEER_CACHE

    if not (PEER_CACHE / INSTALLED_MARK).exists():
        pytest.skip(f"LiteLLM is not installed in {PEER_CACHE} (python -m bench.run --peers installs it)")
    out = tmp_path / "bench.json"
    done = bench("--only", "latency,stream1,bulk", "--peers", "--json", str(out))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report = json.loads(out.read_text())
    assert report["peer"]["phases"] == ["latency", "stream1"] and set(report["peer"]["skipped"]) == {"bulk"}
    figures = report["figures"]
    for key in ("latency_p50_ms", "latency_p99_ms", "stream1_event_p99_ms", "cpu_per_request_latency_ms"):
        assert isinstance(figures[key]["peer"], float) and isinstance(figures[key]["peer_added"], float), key
    assert figures["bulk_mb_per_s"]["peer"] is None and isinstance(figures["bulk_mb_per_s"]["sluice"], float)
    assert "litellm-bare" in done.stdout and "litellm skips bulk" in done.stdout


def test_postgres_puts_this_sluice_on_sqlite_in_bares_place_and_on_postgresql_in_sluices(
    tmp_path: Path, postgres_available: None
) -> None:
    out = tmp_path / "bench.json"
    done = bench("--only", "latency,writer", "--postgres", "--json", str(out))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report = json.loads(out.read_text())
    assert report["engines"]["bare"] == "sqlite" and report["engines"]["sluice"] == "postgres"
    assert "sluice column: the same on PostgreSQL" in done.stdout
    figures = report["figures"]
    assert figures["writer_rows_per_s"]["sluice"] > 0 and figures["writer_postgres_rows_per_s"]["sluice"] > 0
    latency = figures["latency_p50_ms"]
    assert isinstance(latency["bare"], float) and isinstance(latency["sluice"], float)


def test_postgres_is_not_given_with_what_else_replaces_bare() -> None:
    done = bench("--postgres", "--against", ".")
    assert done.returncode == 2 and "--postgres" in done.stderr
