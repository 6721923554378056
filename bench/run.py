"""sluice's benchmark: what the addons cost over a bare mitmdump, figure by figure, with issue #7's targets.

    .venv/bin/python -m bench.run                    # full run, several minutes
    .venv/bin/python -m bench.run --quick            # smoke run, tiny sizes, under a minute
    .venv/bin/python -m bench.run --json out.json    # also write every figure as JSON
    .venv/bin/python -m bench.run --profile prof/    # py-spy both proxies through each phase
    .venv/bin/python -m bench.run --against ../prev  # another checkout's sluice in bare's place
    .venv/bin/python -m bench.run --ops --only latency,throughput   # metrics + tracing on, against off
    .venv/bin/python -m bench.run --ops metrics --only latency      # one of them (metrics, tracing)
    .venv/bin/python -m bench.run --peers --only latency,throughput # LiteLLM's proxy too (bench/peers.py)

It starts, all on 127.0.0.1: the bench upstream (bench/upstream.py, a fake Anthropic API in a process of its
own), a BARE mitmdump (bench/bare_stream.py only: it streams `text/event-stream`, as any LLM proxy must)
and a mitmdump WITH sluice on a full configuration (client key, upstream key pool, system blocks, cache cap,
model aliases, header allow-lists). Both also load bench/looplag.py, which records how late their event
loop runs a periodic callback. The client behaves like Claude Code behind HTTPS_PROXY: CONNECT, TLS to the
proxy's certificate, HTTP/1.1 keep-alive; mitmproxy talks TLS to the upstream, which it finds under
api.anthropic.com through tests/e2e/sitecustomize.

Every phase runs against both proxies in turn, alternating which goes first from round to round, so a change
in the machine's speed hits both alike. `--peers` adds a third, LiteLLM's proxy (bench/peers.py), to the
phases a base-URL proxy can run. Every loop is bounded in count and time, and every process the run
started is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.ops_sink import PostSink, scrape_bytes
from bench.peers import (
    PEER_NAME,
    PEER_PHASES,
    litellm_venv,
    peer_report,
    start_litellm,
)
from bench.processes import (
    BARE_SCRIPT,
    SLUICE_SCRIPT,
    BenchError,
    Profiler,
    Proxy,
    run_command,
    start_mitmdump,
    start_upstream,
    top_frames,
)
from bench.report import add_peer_column, build_figures, git_revision, machine_info, print_report
from bench.scenarios import (
    Workload,
    bombs,
    bulk,
    conversation,
    fleet,
    measure_rewrite,
    measure_writer,
    sequential,
    streams,
    throughput,
)
from bench.settings import (
    BEDROCK_HOST,
    BEDROCK_KEY_ENV,
    CLIENT_KEY_ENV,
    FULL,
    PROVIDER_HOST,
    QUICK,
    SLUICE_CONFIG,
    UPSTREAM_KEY_ENV,
    Settings,
)
from tests.e2e.harness import clean_env, free_port
from tests.postgres import PostgresServer

PROXY_PHASES = (
    "latency",
    "throughput",
    "stream1",
    "stream20",
    "bedrock1",
    "fleet",
    "agent",
    "huge",
    "conversation",
    "bulk",
    "bomb",
)
LOCAL_PHASES = ("rewrite", "writer")
PAUSE_S = 0.1  # between two runs of a phase: the previous proxy's last writes settle
STARTUP_GRACE_S = 1.0  # for a mitmdump that failed its first requests to finish exiting


def _phases(work: Workload) -> dict[str, Callable[[Proxy], Awaitable[dict[str, Any]]]]:
    s = work.settings
    return {
        "latency": lambda p: sequential(p, work, work.small, s.latency_requests, "latency"),
        "throughput": lambda p: throughput(p, work),
        "stream1": lambda p: streams(p, work, 1, s.single_streams, "stream1"),
        "stream20": lambda p: streams(p, work, s.many_streams, s.many_stream_waves, "stream20"),
        "fleet": lambda p: fleet(p, work),
        "bedrock1": lambda p: streams(p, work, 1, s.single_streams, "bedrock1", bedrock=True),
        "agent": lambda p: sequential(p, work, work.agent, s.agent_requests, "agent"),
        "huge": lambda p: sequential(p, work, work.huge, s.huge_requests, "huge"),
        "conversation": lambda p: conversation(p, work),
        "bulk": lambda p: bulk(p, work),
        "bomb": lambda p: bombs(p, work),
    }


async def measure(
    proxies: dict[str, Proxy], work: Workload, only: Sequence[str], deadline: float, profiler: Profiler
) -> dict[str, dict[str, dict[str, list[Any]]]]:
    """Every selected phase, round after round, each proxy in turn (bare, sluice and a peer if one runs, the
    order reversed every other round): {proxy: {phase: {part: [...]}}}."""
    s = work.settings
    raw: dict[str, dict[str, dict[str, list[Any]]]] = {name: {} for name in proxies}
    # Warm both up: imports, caches, the pricing table, the credential pool's first read.
    for proxy in proxies.values():
        try:
            await sequential(proxy, work, work.small, s.warmup_requests, "warmup")
            await streams(proxy, work, 2, 1, "warmup")
            await sequential(proxy, work, work.agent, 1, "warmup")
        except Exception:
            # mitmdump listens before its scripts have loaded: one that fails to start (a script error,
            # an `--against` checkout that does not import) dies here. Say so, with its log.
            await asyncio.sleep(STARTUP_GRACE_S)
            proxy.child.check_alive()
            raise
    for phase, run_phase in _phases(work).items():
        if phase not in only:
            continue
        names = [name for name in proxies if name != PEER_NAME or phase in PEER_PHASES]
        for round_index in range(s.rounds):
            for name in names if round_index % 2 == 0 else names[::-1]:
                if time.monotonic() > deadline:
                    raise BenchError(f"the run went over its {s.deadline_s:g} s limit (at {phase})")
                for proxy in proxies.values():
                    proxy.child.check_alive()
                with profiler.record(proxies[name], phase):
                    result = await run_phase(proxies[name])
                store = raw[name].setdefault(phase, {})
                for part, value in result.items():
                    store.setdefault(part, []).extend(value if isinstance(value, list) else [value])
                await asyncio.sleep(PAUSE_S)
    return raw


def _start_proxies(
    workdir: Path,
    work: Workload,
    stack: contextlib.ExitStack,
    against: Path | None = None,
    with_bombs: bool = False,
    ops: dict[str, Any] | None = None,
    peer_venv: Path | None = None,
    postgres_url: str | None = None,
) -> dict[str, Proxy]:
    from tests.e2e.harness import SITECUSTOMIZE_DIR, make_test_ca

    ca = make_test_ca(workdir / "ca")
    bomb_bytes = work.settings.bomb_bytes if with_bombs else 0
    upstream, upstream_port = start_upstream(workdir, ca.leaf_cert, ca.leaf_key, bomb_bytes)
    stack.callback(upstream.stop)
    env = clean_env(
        {
            "PYTHONPATH": str(SITECUSTOMIZE_DIR),
            "SLUICE_TEST_HOSTS": ",".join(
                f"{h}=127.0.0.1:{upstream_port}" for h in (PROVIDER_HOST, BEDROCK_HOST)
            ),
            CLIENT_KEY_ENV: work.client_key,
            BEDROCK_KEY_ENV: "ABSK" + secrets.token_hex(24),
            **{name: "sk-ant-api03-bench-" + secrets.token_hex(24) for name in UPSTREAM_KEY_ENV},
        }
    )
    config = workdir / "sluice.toml"
    config.write_text(SLUICE_CONFIG)
    sluice_sets = [f"sluice_config={config}", f"sluice_db={workdir / 'sluice.db'}"]
    baseline: tuple[list[Path], list[str]] = ([BARE_SCRIPT], [])
    if against is not None:  # another sluice in bare's place: a before/after of a change in one run
        baseline = (
            [against / "addons" / "sluice.py"],
            [f"sluice_config={config}", f"sluice_db={workdir / 'against.db'}"],
        )
    if postgres_url is not None:  # this sluice on SQLite in bare's place, on PostgreSQL in sluice's
        baseline = ([SLUICE_SCRIPT], [f"sluice_config={config}", f"sluice_db={workdir / 'sqlite.db'}"])
        sluice_sets = [f"sluice_config={config}", f"sluice_db={postgres_url}"]
    if ops is not None:  # this sluice with metrics and tracing off in bare's place, on in sluice's
        baseline = ([SLUICE_SCRIPT], [f"sluice_config={config}", f"sluice_db={workdir / 'ops-off.db'}"])
        sink = PostSink()
        stack.callback(sink.stop)
        ops.update(sink=sink, metrics=f"127.0.0.1:{free_port()}")
        if ops["parts"] in ("metrics", "both"):
            sluice_sets.append(f"sluice_metrics={ops['metrics']}")
        if ops["parts"] in ("tracing", "both"):
            sluice_sets.append(f"sluice_otlp={sink.url}")
    proxies = {}
    for name, scripts, sets in (("bare", *baseline), ("sluice", [SLUICE_SCRIPT], sluice_sets)):
        proxy = start_mitmdump(name, workdir, scripts=scripts, sets=sets, env=env, upstream_ca=ca.ca_cert)
        stack.callback(proxy.child.stop)
        proxies[name] = proxy
    if peer_venv is not None:
        peer = start_litellm(
            workdir,
            peer_venv,
            upstream_port=upstream_port,
            ca_cert=ca.ca_cert,
            client_key=work.client_key,
            upstream_key="sk-ant-api03-bench-" + secrets.token_hex(24),
        )
        stack.callback(peer.child.stop)
        proxies[PEER_NAME] = peer
    return proxies


def run(
    settings: Settings,
    *,
    mode: str,
    only: Sequence[str],
    keep: bool,
    profile_dir: Path | None,
    against: Path | None = None,
    ops: str | None = None,
    peers: bool = False,
    postgres: PostgresServer | None = None,
) -> dict[str, Any]:
    """One whole benchmark; returns the report (and prints the table). With `postgres` (a server the run
    started), sluice on PostgreSQL in sluice's place and on SQLite in bare's, and the writer on both."""
    # Installed (once) before the clock starts: a first install takes longer than a quick run may.
    peer_venv = litellm_venv() if peers and set(only) & set(PEER_PHASES) else None
    started = time.monotonic()
    deadline = started + settings.deadline_s
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    finished = False
    try:
        machine = machine_info()
        work = Workload(client_key="sk-ant-bench-client-" + secrets.token_hex(16), settings=settings)
        raw: dict[str, Any] = {"bare": {}, "sluice": {}}
        if "rewrite" in only:
            raw["rewrite"] = {
                "agent": measure_rewrite(work.agent, settings),
                "huge": measure_rewrite(work.huge, settings),
            }
        if "writer" in only:
            raw["writer"] = measure_writer(str(workdir / "writer-bench.db"), settings.writer_rows)
            if postgres is not None:
                raw["writer_postgres"] = measure_writer(postgres.create_database(), settings.writer_rows)
        proxies: dict[str, Proxy] = {}
        profiler = Profiler(profile_dir)
        ops_setup: dict[str, Any] | None = {"parts": ops} if ops else None
        if set(only) & set(PROXY_PHASES):
            with contextlib.ExitStack() as stack:
                if "bomb" in only:
                    work.request_bomb  # noqa: B018 -- built now, not while the bomb phase is timed
                postgres_url = postgres.create_database() if postgres is not None else None
                proxies = _start_proxies(
                    workdir, work, stack, against, "bomb" in only, ops_setup, peer_venv, postgres_url
                )
                raw.update(asyncio.run(measure(proxies, work, only, deadline, profiler)))
                if ops_setup is not None and ops in ("metrics", "both"):
                    ops_setup["metrics_bytes"] = scrape_bytes(ops_setup["metrics"])
                for proxy in proxies.values():
                    proxy.child.stop()  # mitmproxy's `done`: the lag addon writes its samples
        figures = build_figures(raw, proxies, settings)
        if peer_venv is not None:
            add_peer_column(figures, raw["bare"], raw.get(PEER_NAME, {}), settings)
        if against is not None or ops or postgres is not None:
            for figure in figures.values():
                figure.target = None  # the targets are for sluice over bare mitmdump, not over a sluice
        report: dict[str, Any] = {
            "mode": mode,
            "machine": machine,
            "settings": asdict(settings),
            "phases": list(only),
            "seconds": round(time.monotonic() - started, 1),
            "figures": {key: figure.as_json(peer=peer_venv is not None) for key, figure in figures.items()},
        }
        if peer_venv is not None:
            report["peer"] = peer_report(peer_venv, tuple(only))
        if against is not None:
            report["baseline"] = {"path": str(against), "commit": git_revision(against)}
        if postgres is not None:
            with postgres.admin_connect() as conn:
                version = conn.execute("show server_version").fetchone()
            report["engines"] = {
                "bare": "sqlite",
                "sluice": "postgres",
                "server": version[0] if version else "?",
            }
        if ops_setup is not None and "sink" in ops_setup:
            sink = ops_setup["sink"]
            report["ops"] = {
                "parts": ops,
                "otlp_posts": dict(sink.posts),
                "otlp_bytes": sink.bytes,
                "metrics_bytes": ops_setup.get("metrics_bytes"),
            }
        if profiler.files:
            report["profiles"] = {path.name: top_frames(path) for path in profiler.files}
        print_report(report, figures)
        finished = True
        return report
    finally:
        if keep or not finished:
            print(f"bench: work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny sizes, one round, under a minute"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON to PATH")
    parser.add_argument("--rounds", type=int, help="alternating rounds of every phase (full: 3, quick: 1)")
    parser.add_argument(
        "--only",
        metavar="PHASE,...",
        help=f"run only these phases, of: {','.join(PROXY_PHASES + LOCAL_PHASES)} (other figures stay empty)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="in bare's place, the sluice of another checkout (a `git worktree` of the previous commit, say) "
        "with the same configuration: a change's before/after in one run, on the same machine state",
    )
    parser.add_argument(
        "--ops",
        nargs="?",
        const="both",
        choices=("metrics", "tracing", "both"),
        help="the cost of operations: in bare's place this sluice with metrics and tracing off, in sluice's "
        "place with `sluice_metrics`, `sluice_otlp` or both on (spans go to a loopback collector)",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also LiteLLM's proxy (installed on first use into .bench-peers/litellm, a virtualenv of its "
        "own) on its Anthropic pass-through route, beside bare mitmdump and sluice, in the phases a base-URL "
        "proxy runs: its columns are over bare mitmdump, like sluice's",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="sluice on PostgreSQL (a throwaway server this run starts: Debian's postgresql package) in "
        "sluice's place, the same sluice on SQLite in bare's place; the writer's rows per second on both",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy both mitmdumps through the first round of every phase into DIR (slows them down)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = replace(settings, rounds=max(1, args.rounds))
    only = tuple(args.only.split(",")) if args.only else PROXY_PHASES + LOCAL_PHASES
    unknown = set(only) - set(PROXY_PHASES + LOCAL_PHASES)
    if unknown:
        parser.error(f"--only: unknown phases {', '.join(sorted(unknown))}")
    if args.ops and args.against is not None:
        parser.error("--ops and --against both name what runs in bare's place: give one")
    if args.postgres and (args.ops or args.against is not None or args.peers):
        parser.error(
            "--postgres puts sluice on SQLite in bare's place: give it without --against, --ops, --peers"
        )
    if args.peers and (args.ops or args.against is not None):
        parser.error("--peers compares with bare mitmdump: give it without --against and --ops")
    if args.against is not None:
        args.against = args.against.resolve()
        if not (args.against / "addons" / "sluice.py").is_file():
            parser.error(f"--against: no addons/sluice.py in {args.against}")
    with contextlib.ExitStack() as stack:
        postgres = stack.enter_context(PostgresServer()) if args.postgres else None
        return run_command(
            lambda: run(
                settings,
                mode="quick" if args.quick else "full",
                only=only,
                keep=args.keep,
                profile_dir=args.profile,
                against=args.against,
                ops=args.ops,
                peers=args.peers,
                postgres=postgres,
            ),
            args.json,
        )


if __name__ == "__main__":
    sys.exit(main())
