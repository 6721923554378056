"""From samples to figures: percentiles, sluice/bare, sluice-bare, the targets of issue #7, and the table."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sqlite3
import ssl
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.processes import ROOT, BenchError, Proxy
from bench.settings import Settings

# Phases whose event-loop lag the target speaks of: traffic a proxy should carry without falling behind
# (one client back to back, paced streams). Saturation (every connection sending as fast as it can) keeps
# the loop busy by design; its lag is reported apart.
LAG_UNDER_LOAD = ("latency", "stream1", "stream20")
LAG_SATURATED = ("throughput",)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between the closest ranks; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def machine_info() -> dict[str, Any]:
    import mitmproxy.version

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "openssl": ssl.OPENSSL_VERSION,
        "sqlite": sqlite3.sqlite_version,
        "sluice_commit": git_revision(),
        "load_average_at_start": _load_average(),
    }


def _load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(load, 2) for load in os.getloadavg()]
    return None


def git_revision(root: Path = ROOT) -> str | None:
    """The checkout's short commit, `+changes` when its addons, rules or state differ from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5)
        if done.returncode:
            raise OSError(done.stderr)
        return done.stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "addons", "rules", "state")
        return git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Figure:
    label: str
    unit: str
    bare: float | None
    sluice: float | None
    # ("ratio_min", x): sluice/bare >= x; ("added_max", x): sluice - bare <= x; ("max" | "min", x): sluice
    target: tuple[str, float] | None = None
    note: str = ""
    peer: float | None = None  # `--peers`: the same figure for the peer proxy (bench/peers.py)

    def over_bare(self, value: float | None) -> tuple[float | None, float | None]:
        """`value` against bare: (value / bare, value - bare), each None where it cannot be had."""
        if self.bare is None or value is None:
            return None, None
        return (value / self.bare if self.bare else None), value - self.bare

    @property
    def ratio(self) -> float | None:
        return self.over_bare(self.sluice)[0]

    @property
    def added(self) -> float | None:
        return self.over_bare(self.sluice)[1]

    @property
    def peer_ratio(self) -> float | None:
        return self.over_bare(self.peer)[0]

    @property
    def peer_added(self) -> float | None:
        return self.over_bare(self.peer)[1]

    def target_text(self) -> str:
        if self.target is None:
            return ""
        kind, value = self.target
        return {
            "ratio_min": f">= {value:g} x bare",
            "added_max": f"<= bare + {value:g} {self.unit}",
            "max": f"<= {value:g} {self.unit}",
            "min": f">= {value:,.0f} {self.unit}",
        }[kind]

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        kind, value = self.target
        measured = {"ratio_min": self.ratio, "added_max": self.added}.get(kind, self.sluice)
        if measured is None:
            return None
        return measured >= value if kind in ("ratio_min", "min") else measured <= value

    def as_json(self, peer: bool = False) -> dict[str, Any]:
        """The figure as the `--json` report has it; with `peer` (a `--peers` run) the peer's value, ratio
        and difference over bare too, None where the peer did not run the phase."""
        found = {
            "label": self.label,
            "unit": self.unit,
            "bare": self.bare,
            "sluice": self.sluice,
            "ratio": self.ratio,
            "added": self.added,
            "target": self.target_text() or None,
            "result": {True: "PASS", False: "MISS", None: None}[self.passed],
            "note": self.note or None,
        }
        if peer:
            found.update(peer=self.peer, peer_ratio=self.peer_ratio, peer_added=self.peer_added)
        return found


def lag_samples(proxy: Proxy, phases: Sequence[str]) -> list[float]:
    """The lateness samples bench/looplag.py took while one of `phases` loaded the proxy."""
    windows = [window for phase in phases for window in proxy.windows.get(phase, [])]
    if not windows or proxy.lag_file is None:
        return []
    try:
        data = json.loads(proxy.lag_file.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(
            f"{proxy.name}: no event-loop lag samples ({e}):\n{proxy.child.log_tail()}"
        ) from None
    return [lag for at, lag in data["samples"] if any(start <= at <= end for start, end in windows)]


def _size(n: int) -> str:
    return f"{n / 1e6:g} MB" if n >= 1_000_000 else f"{n / 1e3:g} KB"


def _p99_increase(during: Sequence[float], calm: Sequence[float]) -> float | None:
    with_bomb, without = percentile(during, 99), percentile(calm, 99)
    return None if with_bomb is None or without is None else (with_bomb - without) * 1e3


def build_figures(raw: dict[str, Any], proxies: dict[str, Proxy], s: Settings) -> dict[str, Figure]:
    """Every figure of issue #7 (plus a few that explain them); None where a phase did not run."""

    def both(phase: str, fn: Callable[[dict[str, list[Any]]], float | None]) -> tuple[float | None, ...]:
        return tuple(fn(raw[name][phase]) if raw[name].get(phase) else None for name in ("bare", "sluice"))

    def pct_ms(phase: str, part: str, q: float) -> tuple[float | None, ...]:
        return both(phase, lambda d: scaled(percentile(d[part], q), 1e3))

    def per_unit(phase: str, factor: float) -> tuple[float | None, ...]:
        def fn(d: dict[str, list[Any]]) -> float | None:
            pairs = [(c, u) for c, u in zip(d["cpu_s"], d["units"], strict=True) if c is not None and u]
            return sum(c for c, _ in pairs) / sum(u for _, u in pairs) * factor if pairs else None

        return both(phase, fn)

    f: dict[str, Figure] = {}
    f["throughput_rps"] = Figure(
        f"non-streaming throughput, {s.throughput_concurrency} connections",
        "req/s",
        *both("throughput", lambda d: mean(d["rps"])),
        ("ratio_min", 0.9),
        f"mean of {s.rounds} x {s.throughput_s:g} s",
    )
    f["cpu_per_request_ms"] = Figure(
        "mitmdump CPU per request (throughput phase)", "ms", *per_unit("throughput", 1e3), note="user+system"
    )

    def used_per_request(part: str, factor: float) -> tuple[float | None, ...]:
        return both("throughput", lambda d: _sum_per_unit(d, (part,), factor))

    f["main_cpu_per_request_ms"] = Figure(
        "main-thread CPU per request (throughput phase)",
        "ms",
        *used_per_request("main_s", 1e3),
        ("added_max", 0.3),
        "the event loop: where a request waits",
    )
    f["writer_cpu_per_row_ms"] = Figure(
        "writer-thread CPU per row (throughput phase)", "ms", *used_per_request("writer_s", 1e3)
    )
    f["other_cpu_per_request_ms"] = Figure(
        "other threads and child processes, CPU per request",
        "ms",
        *both(
            "throughput",
            lambda d: _sum_per_unit(d, ("other_threads_s", "children_s"), 1e3),
        ),
    )
    f["write_syscalls_per_request"] = Figure(
        "file write system calls per request (throughput phase)",
        "",
        *used_per_request("write_calls", 1.0),
        note="write(2) and kin, /proc io: the database's; sockets not counted",
    )
    f["read_syscalls_per_request"] = Figure(
        "file read system calls per request (throughput phase)",
        "",
        *used_per_request("read_calls", 1.0),
        note="read(2) and kin, /proc io",
    )
    # Cost growth: CPU per call against request size, and against one conversation's length.
    for phase, size in (
        ("latency", s.small_request_bytes),
        ("agent", s.agent_request_bytes),
        ("huge", s.huge_request_bytes),
    ):
        f[f"cpu_per_request_{phase}_ms"] = Figure(
            f"CPU per request of {_size(size)}, 1 connection", "ms", *per_unit(phase, 1e3), note="user+system"
        )
    for turns in s.conversation_turns:

        def at_turn(d: dict[str, list[Any]], t: int = turns) -> float | None:
            pairs = [
                (c, u) for c, u in zip(d[f"cpu_s_{t}"], d[f"units_{t}"], strict=True) if c is not None and u
            ]
            return sum(c for c, _ in pairs) / sum(u for _, u in pairs) * 1e3 if pairs else None

        size = both("conversation", lambda d, t=turns: float(d[f"bytes_{t}"][0]))[1]
        f[f"cpu_per_request_turn{turns}_ms"] = Figure(
            f"CPU per request at turn {turns} of a conversation",
            "ms",
            *both("conversation", at_turn),
            note=f"{size / 1000:.0f} KB body" if size else "",
        )
    f["latency_p50_ms"] = Figure(
        "request latency p50, 1 connection",
        "ms",
        *pct_ms("latency", "latency", 50),
        ("added_max", 0.5),
        f"{s.rounds * s.latency_requests} requests of {_size(s.small_request_bytes)}",
    )
    f["latency_p99_ms"] = Figure("request latency p99, 1 connection", "ms", *pct_ms("latency", "latency", 99))
    for phase, count in (("stream1", 1), ("stream20", s.many_streams)):
        label = f"{count} stream{'s' if count > 1 else ''}"
        f[f"{phase}_ttfb_p50_ms"] = Figure(f"stream TTFB p50, {label}", "ms", *pct_ms(phase, "ttfb", 50))
        f[f"{phase}_ttfb_p99_ms"] = Figure(f"stream TTFB p99, {label}", "ms", *pct_ms(phase, "ttfb", 99))
        f[f"{phase}_event_p50_ms"] = Figure(
            f"per-event latency p50, {label}", "ms", *pct_ms(phase, "events", 50)
        )
        f[f"{phase}_event_p99_ms"] = Figure(
            f"per-event latency p99, {label}",
            "ms",
            *pct_ms(phase, "events", 99),
            ("added_max", 1.0),
            f"one event every {s.stream_interval_us / 1000:g} ms",
        )
    fleet = f"{s.fleet_streams:,} streams at once"
    f["fleet_event_p50_ms"] = Figure(f"per-event latency p50, {fleet}", "ms", *pct_ms("fleet", "events", 50))
    f["fleet_event_p99_ms"] = Figure(
        f"per-event latency p99, {fleet}",
        "ms",
        *pct_ms("fleet", "events", 99),
        ("added_max", 2.0),
        f"{s.fleet_events} events each, one every {s.fleet_interval_us / 1000:g} ms; while all are open",
    )
    f["fleet_worst_stream_p99_ms"] = Figure(
        f"slowest stream's p99 event latency, {fleet}",
        "ms",
        *both(
            "fleet",
            lambda d: scaled(max((v for v in d["worst_stream_p99"] if v is not None), default=None), 1e3),
        ),
    )
    f["fleet_starved_streams"] = Figure(
        f"streams with an event a second or more late, {fleet}",
        "",
        *both("fleet", lambda d: float(max(d["starved"]))),
        ("max", 0.0),
        "worst round",
    )
    f["fleet_rss_per_stream_kb"] = Figure(
        f"resident memory per open stream, {fleet}",
        "KB",
        *both("fleet", lambda d: max(d["rss_per_stream"]) / 1024),
        ("added_max", 16.0),
        "peak while streaming over before the connections opened; worst round",
    )
    f["fleet_cpu_per_event_us"] = Figure(
        f"mitmdump CPU per streamed event, {fleet}", "us", *per_unit("fleet", 1e6)
    )
    f["bedrock1_event_p50_ms"] = Figure(
        "per-event latency p50, 1 Bedrock event stream", "ms", *pct_ms("bedrock1", "events", 50)
    )
    f["bedrock1_event_p99_ms"] = Figure(
        "per-event latency p99, 1 Bedrock event stream",
        "ms",
        *pct_ms("bedrock1", "events", 99),
        ("added_max", 1.0),
        f"ConverseStream frames, one every {s.stream_interval_us / 1000:g} ms",
    )
    f["cpu_per_event_us"] = Figure(
        f"mitmdump CPU per streamed event ({s.many_streams} streams)", "us", *per_unit("stream20", 1e6)
    )
    mb = _size(s.bulk_stream_bytes)
    f["bulk_rss_growth_mb"] = Figure(
        f"peak RSS growth over idle, {mb} stream",
        "MB",
        *both("bulk", lambda d: max(d["growth"]) / 2**20),
        ("max", 16.0),
        "worst round",
    )
    f["bulk_mb_per_s"] = Figure(
        f"relay speed, {mb} stream", "MB/s", *both("bulk", lambda d: mean(d["mb_per_s"]))
    )
    bomb = f"{s.bomb_bytes / 2**20:g} MiB" if s.bomb_bytes < 2**30 else f"{s.bomb_bytes / 2**30:g} GiB"
    for kind, label in (("json", "a whole response"), ("sse", "an event stream"), ("request", "a request")):
        f[f"bomb_{kind}_rss_growth_mb"] = Figure(
            f"peak RSS growth, {bomb} gzip bomb as {label}",
            "MB",
            *both("bomb", lambda d, k=kind: max(d[f"{k}_growth"]) / 2**20),
            ("added_max", 128.0),
            "worst round, over idle",
        )
        f[f"bomb_{kind}_others_p99_added_ms"] = Figure(
            f"other clients' p99 latency increase, bomb as {label}",
            "ms",
            *both("bomb", lambda d, k=kind: _p99_increase(d[f"{k}_others"], d[f"{k}_calm"])),
            ("max", 100.0),
            f"{s.bomb_others} clients back to back; p99 with the bomb minus p99 without",
        )
    for phase, size in (("agent", s.agent_request_bytes), ("huge", s.huge_request_bytes)):
        rewrite = raw.get("rewrite", {}).get(phase)
        reference = scaled(percentile(rewrite["reference"], 50), 1e3) if rewrite else None
        f[f"rewrite_{phase}_inprocess_ms"] = Figure(
            f"apply_request_rules p50, {_size(size)} request (in-process CPU)",
            "ms",
            None,
            scaled(percentile(rewrite["rewrite"], 50), 1e3) if rewrite else None,
            note=f"json.loads+dumps alone: {reference:.2f} ms" if reference is not None else "",
        )
        f[f"{phase}_request_latency_p50_ms"] = Figure(
            f"request latency p50, {_size(size)} request", "ms", *pct_ms(phase, "latency", 50)
        )
    for key, engine in (("writer", "SQLite"), ("writer_postgres", "PostgreSQL")):
        writer = raw.get(key)
        if writer is None and key == "writer_postgres":
            continue  # only with --postgres
        f[f"{key}_rows_per_s"] = Figure(
            f"database rows written (RecordWriter, {engine})",
            "rows/s",
            None,
            writer["rows_per_s"] if writer else None,
            ("min", 20_000),
            (
                f"{writer['rows']} rows with 24 rate-limit headers; "
                f"{writer['rows_per_cpu_s']:,.0f} per CPU-second"
            )
            if writer
            else "",
        )
    lag = {name: lag_samples(proxy, LAG_UNDER_LOAD) for name, proxy in proxies.items()}
    saturated = {name: lag_samples(proxy, LAG_SATURATED) for name, proxy in proxies.items()}
    huge = {name: lag_samples(proxy, ("huge",)) for name, proxy in proxies.items()}
    f["loop_lag_p99_ms"] = Figure(
        "event-loop lag p99 under load",
        "ms",
        scaled(percentile(lag.get("bare", []), 99), 1e3),
        scaled(percentile(lag.get("sluice", []), 99), 1e3),
        ("max", 5.0),
        f"1 connection and paced streams; {len(lag.get('sluice', []))} samples",
    )
    f["loop_lag_p99_saturated_ms"] = Figure(
        f"event-loop lag p99 at saturation ({s.throughput_concurrency} connections)",
        "ms",
        scaled(percentile(saturated.get("bare", []), 99), 1e3),
        scaled(percentile(saturated.get("sluice", []), 99), 1e3),
    )
    f["loop_lag_max_huge_ms"] = Figure(
        f"event-loop lag max, {_size(s.huge_request_bytes)} requests",
        "ms",
        scaled(max(huge.get("bare", []), default=None), 1e3),
        scaled(max(huge.get("sluice", []), default=None), 1e3),
    )
    return f


# Figures that mean something else for the peer: it has no writer thread, and uvloop (libuv) reads and
# writes sockets with read(2) and write(2), which /proc/PID/io counts as file I/O (asyncio's recv and send
# it does not).
NOT_FOR_PEERS = ("writer_cpu_per_row_ms", "write_syscalls_per_request", "read_syscalls_per_request")


def add_peer_column(
    figures: dict[str, Figure], bare: dict[str, Any], peer: dict[str, Any], s: Settings
) -> None:
    """Each figure's value for the peer from its samples (`peer`, as `bare`: {phase: {part: [...]}}),
    computed exactly as sluice's is: the figures built again with the peer's samples in sluice's place. The
    in-process figures (rewrite, writer), the event-loop lag (bench/looplag.py runs in the mitmdumps only)
    and NOT_FOR_PEERS stay empty for it."""
    for key, figure in build_figures({"bare": bare, "sluice": peer}, {}, s).items():
        figures[key].peer = None if key in NOT_FOR_PEERS else figure.sluice


def _sum_per_unit(d: dict[str, list[Any]], parts: Sequence[str], factor: float) -> float | None:
    """The `usage` snapshots' `parts` summed over rounds, per unit (request), times `factor`."""
    total = units = 0.0
    for used, count in zip(d.get("usage") or [], d["units"], strict=False):
        if used and count:
            total += sum(used[part] for part in parts)
            units += count
    return total / units * factor if units else None


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _added(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:+.2f} {unit}"


def peer_columns(name: str) -> list[str]:
    """The table's columns for the peer named `name`, after sluice's: its value, over bare and minus bare."""
    return [name, f"{name}/bare", f"{name}-bare"]


def peer_cells(figure: Figure) -> list[str]:
    """One figure's cells in `peer_columns`."""
    return [_number(figure.peer), _ratio(figure.peer_ratio), _added(figure.peer_added, figure.unit)]


def print_report(report: dict[str, Any], figures: dict[str, Figure]) -> None:
    from rich.console import Console
    from rich.table import Table

    m = report["machine"]
    peer = report.get("peer")
    console = Console(width=max(190 if peer else 150, Console().width))
    title = (
        f"sluice benchmark ({report['mode']}, {report['seconds']:.0f} s) · {m['cpu_model']} "
        f"· {m['cpus']} CPUs · Python {m['python']} · mitmproxy {m['mitmproxy']} "
        f"· sluice {m['sluice_commit']} · load {m['load_average_at_start']}"
    )
    baseline = report.get("baseline")
    if baseline:  # --against: the "bare" column is another sluice
        title += (
            f"\nbare column: sluice {baseline['commit']} at {baseline['path']}, with the same configuration"
        )
    engines = report.get("engines")
    if engines:  # --postgres: the same sluice on both columns, on SQLite and on PostgreSQL
        title += (
            "\nbare column: this sluice on SQLite; sluice column: the same on PostgreSQL "
            f"{engines['server']} (a local server, on this machine's cores)"
        )
    ops = report.get("ops")
    if ops:  # --ops: the "bare" column is this sluice with metrics and tracing off
        title += (
            f"\nbare column: this sluice with metrics and tracing off; sluice column: {ops['parts']} on "
            f"(OTLP posts {ops['otlp_posts']}, {ops['otlp_bytes']:,} bytes; "
            f"/metrics {ops['metrics_bytes']} bytes)"
        )
    if peer:  # --peers: LiteLLM's proxy in columns of its own
        title += (
            f"\n{peer['name']} columns: LiteLLM {peer['version']}, {peer['route']}, "
            f"{peer['workers']} worker, log level {peer['log_level']}, no database; "
            f"client hop {peer['client_hop']}; upstream hop {peer['upstream_hop']}"
        )
        for phase, reason in peer["skipped"].items():
            title += f"\n{peer['name']} skips {phase}: {reason}"
    table = Table(title=title, title_justify="left")
    columns = ["figure", "bare", "sluice", "sluice/bare", "sluice-bare"]
    if peer:
        columns += peer_columns(peer["name"])
    for column in [*columns, "target", "result", "note"]:
        numeric = column in columns[1:] and not column.endswith("-bare")
        table.add_column(column, justify="right" if numeric else "left")
    for figure in figures.values():
        table.add_row(
            figure.label,
            _number(figure.bare),
            _number(figure.sluice),
            _ratio(figure.ratio),
            _added(figure.added, figure.unit),
            *(peer_cells(figure) if peer else ()),
            figure.target_text(),
            {True: "[green]PASS[/]", False: "[red]MISS[/]", None: ""}[figure.passed],
            figure.note,
            style=None if figure.target else "dim",
        )
    console.print(table)
    for name, frames in report.get("profiles", {}).items():
        console.print(f"[bold]{name}[/] ({frames['samples']} samples): sluice code, inclusive")
        for frame, share in frames["sluice_inclusive"][:10]:
            console.print(f"  {share:6.1%}  {frame}")
    if report.get("profiles"):
        console.print("[yellow]Profiled run: py-spy slowed the proxies; compare it only with profiled runs.")
    console.print(
        "Latency percentiles are each proxy's own; sluice-bare is the difference of the two percentiles. "
        "Client, upstream and both proxies share this machine's CPUs."
    )
    if peer:
        console.print(
            f"{peer['name']}-bare likewise; its CPU is every process of the peer's. The peer runs only "
            f"{', '.join(peer['phases']) or 'no phase'} of this run: elsewhere its columns are empty."
        )
