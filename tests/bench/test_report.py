"""The report puts a peer proxy (`--peers`) in columns of its own, computed as sluice's are, over the same
bare mitmdump; a run without a peer reports exactly what it did before."""

from __future__ import annotations

import json

import pytest

from bench.report import Figure, add_peer_column, build_figures, print_report
from bench.settings import QUICK


def phase(latency_ms: float, cpu_ms: float, count: int = 10) -> dict[str, list[float]]:
    """One round of the `latency` phase: `count` requests of `latency_ms`, `cpu_ms` of CPU each."""
    return {"latency": [latency_ms / 1e3] * count, "cpu_s": [cpu_ms * count / 1e3], "units": [count]}


def throughput(rps: float, cpu_ms: float) -> dict[str, list[object]]:
    used = {"main_s": cpu_ms * rps / 1e3, "writer_s": 0.0, "other_threads_s": 0.0, "children_s": 0.0}
    used |= {"read_calls": 6 * rps, "write_calls": 4 * rps}
    return {"rps": [rps], "cpu_s": [cpu_ms * rps / 1e3], "units": [rps], "usage": [used]}


def figures_with_peer() -> dict[str, Figure]:
    raw = {
        "bare": {"latency": phase(2.0, 1.5), "throughput": throughput(600, 1.5)},
        "sluice": {"latency": phase(3.0, 2.5), "throughput": throughput(400, 2.5)},
        "litellm": {"latency": phase(14.0, 13.0), "throughput": throughput(60, 13.0)},
    }
    figures = build_figures(raw, {}, QUICK)
    add_peer_column(figures, raw["bare"], raw["litellm"], QUICK)
    return figures


def test_the_peer_column_is_computed_like_sluices_over_the_same_bare() -> None:
    figures = figures_with_peer()
    latency = figures["latency_p50_ms"]
    assert latency.peer == pytest.approx(14.0)
    assert latency.peer_added == pytest.approx(12.0) and latency.peer_ratio == pytest.approx(7.0)
    assert latency.sluice == pytest.approx(3.0)  # sluice's own column is untouched
    assert figures["throughput_rps"].peer_ratio == pytest.approx(0.1)
    assert figures["cpu_per_request_ms"].peer == pytest.approx(13.0)
    assert figures["main_cpu_per_request_ms"].peer == pytest.approx(13.0)


def test_what_the_peer_did_not_run_or_cannot_be_compared_on_stays_empty() -> None:
    figures = figures_with_peer()
    assert figures["stream1_event_p99_ms"].peer is None  # a phase it did not run
    assert figures["loop_lag_p99_ms"].peer is None  # the lag probe runs in the mitmdumps only
    # No writer thread; uvloop's socket read(2)/write(2) are not file I/O.
    for key in ("writer_cpu_per_row_ms", "write_syscalls_per_request", "read_syscalls_per_request"):
        assert figures[key].peer is None, key
    assert figures["write_syscalls_per_request"].sluice is not None  # sluice's stays


def test_the_json_has_peer_fields_only_in_a_peer_run() -> None:
    latency = figures_with_peer()["latency_p50_ms"]
    assert not {"peer", "peer_ratio", "peer_added"} & set(latency.as_json())
    with_peer = latency.as_json(peer=True)
    assert with_peer["peer"] == pytest.approx(14.0) and with_peer["peer_added"] == pytest.approx(12.0)
    empty = Figure("x", "ms", 1.0, 2.0).as_json(peer=True)
    assert empty["peer"] is None and empty["peer_ratio"] is None and empty["peer_added"] is None
    json.dumps(with_peer)


REPORT = {
    "mode": "quick",
    "seconds": 10.0,
    "machine": {
        "cpu_model": "test CPU",
        "cpus": 2,
        "python": "3.12.1",
        "mitmproxy": "12.3.1",
        "sluice_commit": "abc1234",
        "load_average_at_start": [1.0, 1.0, 1.0],
    },
}
PEER = {
    "name": "litellm",
    "version": "1.80.2",
    "route": "Anthropic pass-through (/anthropic/v1/messages)",
    "workers": 1,
    "log_level": "ERROR",
    "client_hop": "plain HTTP on 127.0.0.1",
    "upstream_hop": "HTTPS to 127.0.0.1",
    "phases": ["latency", "throughput"],
    "skipped": {"fleet": "too long for a shared machine"},
}


def test_the_table_has_the_peers_columns_and_says_what_it_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    print_report({**REPORT, "peer": PEER}, figures_with_peer())
    out = capsys.readouterr().out
    assert "litellm/bare" in out and "litellm-bare" in out and "+12.00 ms" in out
    assert "LiteLLM 1.80.2" in out and "1 worker" in out and "plain HTTP on 127.0.0.1" in out
    assert "litellm skips fleet: too long for a shared machine" in out


def test_without_a_peer_the_table_has_no_peer_columns(capsys: pytest.CaptureFixture[str]) -> None:
    print_report(REPORT, figures_with_peer())
    out = capsys.readouterr().out
    assert "sluice/bare" in out and "litellm" not in out
