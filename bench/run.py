"""sluice's benchmark: what the addons cost over a bare mitmdump, figure by figure, with a target for each.

    .venv/bin/python -m bench.run                    # full run, a few minutes
    .venv/bin/python -m bench.run --quick            # smoke run, tiny sizes, under a minute
    .venv/bin/python -m bench.run --json out.json    # also write every figure as JSON

It starts, all on 127.0.0.1: the bench upstream (bench/upstream.py, a fake Anthropic API in its own process),
a BARE mitmdump (only bench/bare_stream.py, which streams `text/event-stream` as any LLM proxy must) and a
mitmdump WITH sluice on a full configuration (client key, upstream key pool, system blocks, cache cap, model
aliases, header allow-lists). Both load bench/looplag.py, which records how late the event loop runs a
periodic callback. The client is a regular-proxy client like Claude Code behind HTTPS_PROXY: CONNECT, TLS to
mitmproxy's certificate, HTTP/1.1 keep-alive; mitmproxy talks TLS to the upstream, which it reaches as
api.anthropic.com through tests/e2e/sitecustomize.

Every measurement runs against both proxies, alternating (bare first on even rounds, sluice first on odd
ones), so drift in the machine's speed hits both alike. Results are the figures, each with both absolute
numbers, sluice/bare and sluice-bare, and PASS/MISS where issue #7 sets a target. Every loop is bounded in
count and time, and every process it started is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import secrets
import selectors
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.payloads import UPSTREAM_MODEL, agent_request, client_headers

ROOT = Path(__file__).resolve().parents[1]
SLUICE_SCRIPT = ROOT / "addons" / "sluice.py"
BARE_SCRIPT = ROOT / "bench" / "bare_stream.py"
LOOPLAG_SCRIPT = ROOT / "bench" / "looplag.py"
PROVIDER_HOST = "api.anthropic.com"
MESSAGES_PATH = "/v1/messages?beta=true"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 60.0
READ_LIMIT = 1024 * 1024
MAX_REQUESTS_PER_WORKER = 1_000_000
_EVENT_TIME = re.compile(rb'"text":"(\d+) "')
_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

# The operator's configuration sluice runs with: every rule family switched on. Secrets are env references
# (the values are generated per run and handed to mitmdump only).
SLUICE_CONFIG = """\
[[clients]]
name = "bench"
key = "env:SLUICE_BENCH_CLIENT_KEY"
user_id = "bench-user-0001"

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:SLUICE_BENCH_KEY_1", "env:SLUICE_BENCH_KEY_2", "env:SLUICE_BENCH_KEY_3"]

[rules]
cache_control_max = 4
max_tokens_default = 8192
model_aliases = { sonnet = "claude-sonnet-4-5", opus = "claude-opus-4-1", haiku = "claude-haiku-4-5" }

[[rules.system_blocks]]
name = "house-rules"
text = "Follow the team's engineering handbook: small commits, tests with every change, no secrets in code."
cache = "5m"

[[rules.system_blocks]]
name = "opus-review"
text = "You are reviewing; be terse."
models = ["claude-opus-*"]

[rules.request_headers]
allow = ["x-client-request-id"]
deny = ["anthropic-dangerous-direct-browser-access"]

[rules.response_headers]
allow = ["x-envoy-upstream-service-time"]
"""


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (a process died, a response was wrong)."""


# --- settings -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    rounds: int
    warmup_requests: int
    latency_requests: int
    throughput_concurrency: int
    throughput_warmup_s: float
    throughput_s: float
    small_request_bytes: int
    stream_events: int
    stream_interval_us: int
    single_streams: int  # sequential streams per round at concurrency 1
    many_streams: int  # concurrent streams
    many_stream_waves: int  # streams each of the concurrent connections runs per round
    agent_request_bytes: int
    agent_requests: int
    huge_request_bytes: int
    huge_requests: int
    bulk_stream_bytes: int
    writer_rows: int
    rewrite_iterations: int
    rewrite_budget_s: float
    deadline_s: float  # the whole run, start-up included


FULL = Settings(
    rounds=3,
    warmup_requests=50,
    latency_requests=400,
    throughput_concurrency=16,
    throughput_warmup_s=1.0,
    throughput_s=8.0,
    small_request_bytes=6_000,
    stream_events=100,
    stream_interval_us=10_000,
    single_streams=8,
    many_streams=20,
    many_stream_waves=2,
    agent_request_bytes=100_000,
    agent_requests=60,
    huge_request_bytes=2_000_000,
    huge_requests=8,
    bulk_stream_bytes=200_000_000,
    writer_rows=50_000,
    rewrite_iterations=200,
    rewrite_budget_s=10.0,
    deadline_s=1_500.0,
)

QUICK = Settings(
    rounds=1,
    warmup_requests=5,
    latency_requests=30,
    throughput_concurrency=16,
    throughput_warmup_s=0.3,
    throughput_s=1.0,
    small_request_bytes=6_000,
    stream_events=15,
    stream_interval_us=5_000,
    single_streams=2,
    many_streams=20,
    many_stream_waves=1,
    agent_request_bytes=20_000,
    agent_requests=5,
    huge_request_bytes=200_000,
    huge_requests=3,
    bulk_stream_bytes=4_000_000,
    writer_rows=2_000,
    rewrite_iterations=5,
    rewrite_budget_s=2.0,
    deadline_s=55.0,
)


# --- statistics ---------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between closest ranks; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


# --- the machine --------------------------------------------------------------------------------------


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
        "sluice_commit": _git_revision(),
    }


def _git_revision() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+dirty' if dirty else ''}"


# --- processes ----------------------------------------------------------------------------------------


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_ENV}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Child:
    """A process this benchmark started, in a session of its own (a terminal's Ctrl-C reaches only us)."""

    def __init__(
        self, name: str, args: list[str], *, env: dict[str, str], log: Path, stdout_pipe: bool
    ) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                args,
                cwd=log.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else sink,
                stderr=sink,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGINT (mitmproxy runs its addons' `done`: queues drain, lag samples are written), then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_upstream(workdir: Path, cert: Path, key: Path) -> tuple[Child, int]:
    args = [sys.executable, "-m", "bench.upstream", "--cert", str(cert), "--key", str(key)]
    env = _clean_env({"PYTHONPATH": str(ROOT)})
    child = Child("bench upstream", args, env=env, log=workdir / "upstream.log", stdout_pipe=True)
    assert child.process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(child.process.stdout, selectors.EVENT_READ)
        if not selector.select(START_TIMEOUT_S):
            child.stop()
            raise BenchError(f"bench upstream did not start:\n{child.log_tail()}")
    line = child.process.stdout.readline().decode().strip()
    if not line.startswith("port "):
        child.stop()
        raise BenchError(f"bench upstream did not start ({line!r}):\n{child.log_tail()}")
    return child, int(line.split()[1])


@dataclass
class Proxy:
    name: str  # "bare" | "sluice"
    child: Child
    port: int
    client_tls: ssl.SSLContext
    lag_file: Path
    windows: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def window(self, phase: str, start: float, end: float) -> None:
        self.windows.setdefault(phase, []).append((start, end))


def start_mitmdump(
    name: str,
    workdir: Path,
    *,
    scripts: Sequence[Path],
    sets: Sequence[str],
    env: dict[str, str],
    upstream_ca: Path,
) -> Proxy:
    from tests.e2e.harness import mitmdump_path

    home = workdir / name
    home.mkdir()
    confdir = home / "mitm"
    lag_file = home / "looplag.json"
    port = _free_port()
    args = [
        str(mitmdump_path()),
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={confdir}",
        "--set",
        f"ssl_verify_upstream_trusted_ca={upstream_ca}",
        "--set",
        "flow_detail=0",  # the console dump costs both proxies alike and is no part of what is measured
        "--set",
        "termlog_verbosity=warn",
    ]
    for script in scripts:
        args += ["-s", str(script)]
    for setting in [*sets, f"bench_looplag_file={lag_file}"]:
        args += ["--set", setting]
    child = Child(f"mitmdump ({name})", args, env=env, log=home / "mitmdump.log", stdout_pipe=False)
    deadline = time.monotonic() + START_TIMEOUT_S
    ca = confdir / "mitmproxy-ca-cert.pem"
    while time.monotonic() < deadline:
        child.check_alive()
        if ca.exists() and _accepts(port):
            context = ssl.create_default_context(cafile=str(ca))
            context.set_alpn_protocols(["http/1.1"])
            return Proxy(name, child, port, context, lag_file)
        time.sleep(0.05)
    child.stop()
    raise BenchError(f"mitmdump ({name}) not ready after {START_TIMEOUT_S}s:\n{child.log_tail()}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# --- the client ---------------------------------------------------------------------------------------


def request_head(path: str, headers: Sequence[tuple[str, str]], length: int) -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"POST {path} HTTP/1.1\r\n{lines}content-length: {length}\r\n\r\n".encode("latin-1")


class Connection:
    """One client connection through a proxy: CONNECT, TLS to the proxy's certificate, HTTP/1.1 keep-alive."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, proxy: Proxy) -> Connection:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=READ_LIMIT)
            writer.write(
                f"CONNECT {PROVIDER_HOST}:443 HTTP/1.1\r\nhost: {PROVIDER_HOST}:443\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise BenchError(f"{proxy.name}: CONNECT refused: {head[:200]!r}")
            await writer.start_tls(proxy.client_tls, server_hostname=PROVIDER_HOST)
        return cls(reader, writer)

    async def send(self, head: bytes, body: bytes) -> None:
        self.writer.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.writer.write(body)
        await self.writer.drain()

    async def read_head(self) -> dict[str, str]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if status_line.split(" ")[1] != "200":
            body = b""
            with contextlib.suppress(Exception):
                body = await self._body(headers)
            raise BenchError(f"upstream call failed: {status_line}: {body[:300]!r}")
        return headers

    async def chunks(self, headers: dict[str, str]) -> Any:
        """The body as it arrives: HTTP/1.1 chunks (RFC 9112 §7.1), or one piece for a Content-Length."""
        if "content-length" in headers:
            yield await self.reader.readexactly(int(headers["content-length"]))
            return
        if "chunked" not in headers.get("transfer-encoding", ""):
            raise BenchError(f"response without framing: {headers}")
        for _ in range(100_000_000):
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return
            data = await self.reader.readexactly(size + 2)
            yield data[:-2]

    async def _body(self, headers: dict[str, str]) -> bytes:
        return b"".join([chunk async for chunk in self.chunks(headers)])

    async def call(self, head: bytes, body: bytes) -> bytes:
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            await self.send(head, body)
            return await self._body(await self.read_head())

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def connections(proxy: Proxy, count: int) -> Any:
    opened = await asyncio.gather(*(Connection.open(proxy) for _ in range(count)))
    try:
        yield opened
    finally:
        await asyncio.gather(*(c.close() for c in opened))


@dataclass
class Workload:
    client_key: str
    settings: Settings
    small: bytes = b""
    small_stream: bytes = b""
    agent: bytes = b""
    huge: bytes = b""

    def __post_init__(self) -> None:
        s = self.settings
        self.small = agent_request(s.small_request_bytes, stream=False)
        self.small_stream = agent_request(s.small_request_bytes, stream=True)
        self.agent = agent_request(s.agent_request_bytes, stream=False)
        self.huge = agent_request(s.huge_request_bytes, stream=False)

    def head(self, body: bytes, *, stream: bool = False, query: str = "") -> bytes:
        path = f"{MESSAGES_PATH}&{query}" if query else MESSAGES_PATH
        return request_head(path, client_headers(self.client_key, stream=stream), len(body))


# --- measurements through the proxies -----------------------------------------------------------------


async def sequential(proxy: Proxy, head: bytes, body: bytes, count: int, phase: str) -> list[float]:
    """`count` requests one after another on one connection; each one's latency in seconds."""
    samples = []
    async with connections(proxy, 1) as (conn,):
        await conn.call(head, body)  # the connection's first request pays for nothing the others do not
        start = time.monotonic()
        for _ in range(count):
            t0 = time.perf_counter()
            response = await conn.call(head, body)
            samples.append(time.perf_counter() - t0)
            if UPSTREAM_MODEL.encode() not in response and proxy.name == "sluice":
                raise BenchError(f"sluice did not alias the model: {response[:200]!r}")
        proxy.window(phase, start, time.monotonic())
    return samples


async def throughput(proxy: Proxy, work: Workload) -> float:
    """Requests completed per second by `throughput_concurrency` keep-alive connections, after a warm-up."""
    s = work.settings
    head = work.head(work.small)
    completed = 0
    async with connections(proxy, s.throughput_concurrency) as conns:
        begin = time.monotonic() + s.throughput_warmup_s
        end = begin + s.throughput_s

        async def worker(conn: Connection) -> None:
            nonlocal completed
            for _ in range(MAX_REQUESTS_PER_WORKER):
                if time.monotonic() >= end:
                    return
                await conn.call(head, work.small)
                if begin <= time.monotonic() <= end:
                    completed += 1

        await asyncio.gather(*(worker(conn) for conn in conns))
    proxy.window("throughput", begin, end)
    return completed / s.throughput_s


async def streams(proxy: Proxy, work: Workload, concurrency: int, per_connection: int, phase: str) -> dict:
    """Paced streams: time to first byte of each, and each event's one-way latency (client receive time
    minus the upstream's write time, both CLOCK_MONOTONIC). Connections start staggered over one interval so
    the events of different streams do not all fall on the same instant."""
    s = work.settings
    query = f"bench=paced&events={s.stream_events}&interval_us={s.stream_interval_us}"
    head = work.head(work.small_stream, stream=True, query=query)
    ttfb: list[float] = []
    events: list[float] = []

    async def worker(index: int, conn: Connection) -> None:
        await asyncio.sleep(index * s.stream_interval_us / 1e6 / concurrency)
        for _ in range(per_connection):
            async with asyncio.timeout(REQUEST_TIMEOUT_S + s.stream_events * s.stream_interval_us / 1e6):
                sent = time.monotonic_ns()
                await conn.send(head, work.small_stream)
                headers = await conn.read_head()
                first = True
                count = 0
                async for chunk in conn.chunks(headers):
                    received = time.monotonic_ns()
                    if first:
                        ttfb.append((received - sent) / 1e9)
                        first = False
                    stamps = _EVENT_TIME.findall(chunk)
                    events.extend((received - int(stamp)) / 1e9 for stamp in stamps)
                    count += len(stamps)
                if count != s.stream_events:
                    raise BenchError(f"{proxy.name}: stream delivered {count} of {s.stream_events} events")

    async with connections(proxy, concurrency) as conns:
        start = time.monotonic()
        await asyncio.gather(*(worker(i, conn) for i, conn in enumerate(conns)))
        proxy.window(phase, start, time.monotonic())
    return {"ttfb": ttfb, "events": events}


class RssSampler:
    """Peak resident memory of a process while a block runs: /proc sampled every few ms, plus the kernel's
    own high-water mark (VmHWM, reset at the start through clear_refs), which no sampling can miss."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def rss(self) -> int:
        status = Path(f"/proc/{self.pid}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        import psutil  # not on Linux: the `bench` extra installs it

        return int(psutil.Process(self.pid).memory_info().rss)

    def _high_water(self) -> int:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        for _ in range(10_000_000):
            if self._stop.wait(0.005):
                return
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self._high_water())


async def bulk(proxy: Proxy, work: Workload) -> dict:
    """One stream of `bulk_stream_bytes` as fast as the proxy relays it: RSS growth over idle, MB/s."""
    size = work.settings.bulk_stream_bytes
    head = work.head(work.small_stream, stream=True, query=f"bench=bulk&bytes={size}")
    received = 0
    async with connections(proxy, 1) as (conn,):
        await asyncio.sleep(0.2)  # let the previous phase's garbage settle
        sampler = RssSampler(proxy.child.pid)
        idle = sampler.rss()
        with sampler:
            start = time.monotonic()
            async with asyncio.timeout(REQUEST_TIMEOUT_S + size / 5e6):
                await conn.send(head, work.small_stream)
                async for chunk in conn.chunks(await conn.read_head()):
                    received += len(chunk)
            elapsed = time.monotonic() - start
        proxy.window("bulk", start, start + elapsed)
    if received < size:
        raise BenchError(f"{proxy.name}: bulk stream delivered {received} of {size} bytes")
    return {"growth": sampler.peak - idle, "idle": idle, "mb_per_s": received / elapsed / 1e6}


class Profiler:
    """`--profile DIR`: py-spy samples each mitmdump during the first round of every phase, to
    DIR/<proxy>-<phase>.txt (collapsed stacks, the input of flamegraph.pl and speedscope). Sampling slows
    the proxy down, so the figures of a profiled run are not comparable with an unprofiled one."""

    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.files: list[Path] = []
        self._program: str | None = None
        if out_dir is not None:
            self._program = shutil.which("py-spy") or shutil.which(
                "py-spy", path=str(Path(sys.executable).parent)
            )
            if self._program is None:
                raise BenchError("--profile needs py-spy: pip install -e '.[bench]'")
            out_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def record(self, proxy: Proxy, phase: str) -> Iterator[None]:
        path = self.out_dir / f"{proxy.name}-{phase}.txt" if self.out_dir is not None else None
        if path is None or self._program is None or path in self.files:
            yield
            return
        self.files.append(path)
        args = [self._program, "record", "--pid", str(proxy.child.pid), "--format", "raw", "--nolineno"]
        args += ["--nonblocking", "--rate", "250", "--output", str(path)]
        with (self.out_dir / "py-spy.log").open("ab") as log:
            spy = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        time.sleep(0.5)  # attaching takes a moment
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def top_frames(collapsed: Path, count: int = 12) -> dict[str, list[tuple[str, float]]]:
    """The functions most samples were in (self) and under (inclusive), as shares of all samples."""
    own: dict[str, int] = {}
    under: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in collapsed.read_text().splitlines():
            stack, _, samples = line.rpartition(" ")
            if not stack or not samples.isdigit():
                continue
            weight = int(samples)
            frames = stack.split(";")
            total += weight
            own[frames[-1]] = own.get(frames[-1], 0) + weight
            for frame in set(frames):
                under[frame] = under.get(frame, 0) + weight

    def top(table: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda item: -item[1])[:count]
        return [(frame, round(weight / total, 4)) for frame, weight in ranked] if total else []

    return {"self": top(own), "inclusive": top(under), "samples": [("total", total)]}


# --- measurements in-process --------------------------------------------------------------------------


def measure_rewrite(body: bytes, settings: Settings) -> dict:
    """`apply_request_rules` on one body with the benchmark's rules, as the rewrite addon calls it;
    `json.loads` + `json.dumps` of the same body as a yardstick for what any rewrite must spend."""
    from rules.config import parse_config
    from rules.rewrite import RuleContext, apply_request_rules, should_strip_billing_block

    config = parse_config(SLUICE_CONFIG, "bench config")
    context = RuleContext(
        provider="anthropic",
        api="messages",
        host=PROVIDER_HOST,
        rules=config.rules,
        client="bench",
        user_id="bench-user-0001",
        strip_billing_block=should_strip_billing_block(PROVIDER_HOST, None),
    )
    result = apply_request_rules(body, context)
    if result.body is None:
        raise BenchError(f"the rules changed nothing on the benchmark request: {result.note}")

    def timed(fn: Callable[[], object]) -> list[float]:
        samples = []
        deadline = time.monotonic() + settings.rewrite_budget_s
        for _ in range(settings.rewrite_iterations):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
            if time.monotonic() > deadline:
                break
        return samples

    rewrite = timed(lambda: apply_request_rules(body, context))
    reference = timed(lambda: json.dumps(json.loads(body), ensure_ascii=False, separators=(",", ":")))
    return {"rewrite": rewrite, "reference": reference, "applied": result.applied, "bytes": len(body)}


def measure_writer(workdir: Path, rows: int) -> dict:
    """Rows per second through `state.writer.RecordWriter` into a fresh database: rows like the meter
    writes for a streamed Claude Code call, each with Anthropic's 24 rate-limit headers."""
    from state import db as sluice_db
    from state.writer import CallRecord, RecordWriter
    from tests.fake_provider import anthropic_ratelimit_headers

    path = workdir / "writer-bench.db"
    sluice_db.connect(str(path)).conn.close()
    now = datetime.now(UTC)
    limits = [(name.lower(), value) for name, value in anthropic_ratelimit_headers(1, now)]
    records = []
    for index in range(rows):
        row: dict[str, Any] = dict.fromkeys(sluice_db.CALL_COLUMNS)
        row.update(
            id=f"{index:08x}-bench-4000-8000-{secrets.token_hex(6)}",
            started_at=now.isoformat(timespec="microseconds"),
            client="bench",
            host=PROVIDER_HOST,
            method="POST",
            path="/v1/messages",
            provider="anthropic",
            api="messages",
            model=UPSTREAM_MODEL,
            stream=1,
            status=200,
            request_id="req_011C" + secrets.token_hex(11),
            response_id="msg_01" + secrets.token_hex(11),
            stop_reason="end_turn",
            input_tokens=1234,
            cache_read_tokens=20_000,
            cache_write_5m_tokens=800,
            cache_write_1h_tokens=0,
            output_tokens=256,
            reasoning_tokens=None,
            web_search_requests=0,
            service_tier="standard",
            cost_usd=0.0140,
            duration_ms=2345.678,
            ttft_ms=456.789,
            credential="keys[0] env:ANTHROPIC_KEY_1",
            request_bytes=98_765,
            response_bytes=4_321,
            rules_applied='["model_alias:sonnet->claude-sonnet-4-5","system_block:house-rules",'
            '"cache_control_cap:5->4","request_headers_dropped:x-debug-trace"]',
            rate_limits=json.dumps(dict(limits)),
            session_id="3f0c9a52-7c1e-4b7a-9d55-2f4b1f9d8e21",
        )
        records.append(
            CallRecord(
                row=row,
                rate_limits=limits,
                host=PROVIDER_HOST,
                credential="sha256:0123456789abcdef",
                observed_at=row["started_at"],
            )
        )
    writer = RecordWriter(lambda: sluice_db.connect(str(path)))
    writer.start()
    try:
        start = time.perf_counter()
        for record in records:
            writer.put(record)
        if not writer.flush(timeout=max(30.0, rows / 1000)):
            raise BenchError("the writer did not drain its queue in time")
        elapsed = time.perf_counter() - start
    finally:
        writer.close()
    with sqlite3.connect(path) as conn:
        written = conn.execute("select count(*) from calls").fetchone()[0]
    if written != rows:
        raise BenchError(f"the writer wrote {written} of {rows} rows")
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed}


# --- figures ------------------------------------------------------------------------------------------


@dataclass
class Figure:
    label: str
    unit: str
    bare: float | None
    sluice: float | None
    # ("ratio_min", x): sluice/bare ≥ x; ("added_max", x): sluice-bare ≤ x; ("max", x) / ("min", x): sluice
    target: tuple[str, float] | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.bare is None or self.sluice is None or self.bare == 0:
            return None
        return self.sluice / self.bare

    @property
    def added(self) -> float | None:
        return None if self.bare is None or self.sluice is None else self.sluice - self.bare

    def target_text(self) -> str:
        if self.target is None:
            return ""
        kind, value = self.target
        return {
            "ratio_min": f"≥ {value:g} x bare",
            "added_max": f"≤ bare + {value:g} {self.unit}",
            "max": f"≤ {value:g} {self.unit}",
            "min": f"≥ {value:,.0f} {self.unit}",
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

    def as_json(self) -> dict[str, Any]:
        return {
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


def _lag_samples(proxy: Proxy, phases: Sequence[str]) -> list[float]:
    try:
        data = json.loads(proxy.lag_file.read_text())
    except (OSError, ValueError) as e:
        raise BenchError(
            f"{proxy.name}: no event-loop lag samples ({e}):\n{proxy.child.log_tail()}"
        ) from None
    windows = [w for phase in phases for w in proxy.windows.get(phase, [])]
    return [lag for at, lag in data["samples"] if any(start <= at <= end for start, end in windows)]


def build_figures(raw: dict[str, Any], proxies: dict[str, Proxy], settings: Settings) -> dict[str, Figure]:
    s = settings
    b, m = raw["bare"], raw["sluice"]

    def both(key: str, fn: Callable[[dict], float | None]) -> tuple[float | None, float | None]:
        return fn(b[key]), fn(m[key])

    def pct_ms(key: str, q: float, sub: str | None = None) -> tuple[float | None, float | None]:
        return both(key, lambda d: _ms(percentile(d[sub] if sub else d, q)))

    figures: dict[str, Figure] = {}
    figures["throughput_rps"] = Figure(
        f"non-streaming throughput, {s.throughput_concurrency} connections",
        "req/s",
        *both("throughput", lambda d: sum(d) / len(d)),
        ("ratio_min", 0.9),
        f"mean of {s.rounds} x {s.throughput_s:g} s",
    )
    n = s.latency_requests * s.rounds
    figures["latency_p50_ms"] = Figure(
        "request latency p50, 1 connection", "ms", *pct_ms("latency", 50), ("added_max", 0.5), f"{n} requests"
    )
    figures["latency_p99_ms"] = Figure("request latency p99, 1 connection", "ms", *pct_ms("latency", 99))
    for key, count in (("stream1", 1), ("stream20", s.many_streams)):
        label = f"{count} stream{'s' if count > 1 else ''}"
        events = len(m[key]["events"])
        figures[f"{key}_ttfb_p50_ms"] = Figure(f"stream TTFB p50, {label}", "ms", *pct_ms(key, 50, "ttfb"))
        figures[f"{key}_ttfb_p99_ms"] = Figure(f"stream TTFB p99, {label}", "ms", *pct_ms(key, 99, "ttfb"))
        figures[f"{key}_event_p50_ms"] = Figure(
            f"per-event latency p50, {label}", "ms", *pct_ms(key, 50, "events")
        )
        figures[f"{key}_event_p99_ms"] = Figure(
            f"per-event latency p99, {label}",
            "ms",
            *pct_ms(key, 99, "events"),
            ("added_max", 1.0),
            f"{events} events, one every {s.stream_interval_us / 1000:g} ms",
        )
    mb = s.bulk_stream_bytes / 1e6
    figures["bulk_rss_growth_mb"] = Figure(
        f"peak RSS growth over idle, {mb:g} MB stream",
        "MB",
        *both("bulk", lambda d: max(r["growth"] for r in d) / 2**20),
        ("max", 16.0),
        "worst of the rounds",
    )
    figures["bulk_mb_per_s"] = Figure(
        f"relay speed, {mb:g} MB stream",
        "MB/s",
        *both("bulk", lambda d: sum(r["mb_per_s"] for r in d) / len(d)),
    )
    for key, size in (("agent", s.agent_request_bytes), ("huge", s.huge_request_bytes)):
        rewrite = raw["rewrite"][key]
        kb = f"{size / 1000:g} KB" if size < 1_000_000 else f"{size / 1e6:g} MB"
        figures[f"rewrite_{key}_inprocess_ms"] = Figure(
            f"apply_request_rules, {kb} request (in-process, p50)",
            "ms",
            None,
            _ms(percentile(rewrite["rewrite"], 50)),
            note=f"json.loads+dumps: {_ms(percentile(rewrite['reference'], 50)):.2f} ms",
        )
        figures[f"{key}_request_latency_p50_ms"] = Figure(
            f"request latency p50, {kb} request", "ms", *pct_ms(key, 50)
        )
    figures["writer_rows_per_s"] = Figure(
        "database rows written (RecordWriter)",
        "rows/s",
        None,
        raw["writer"]["rows_per_s"],
        ("min", 20_000),
        f"{raw['writer']['rows']} rows, 24 rate-limit headers each",
    )
    load = ("throughput", "stream20")
    lag = {name: _lag_samples(proxy, load) for name, proxy in proxies.items()}
    figures["loop_lag_p99_ms"] = Figure(
        "event-loop lag p99 under load",
        "ms",
        _ms(percentile(lag["bare"], 99)),
        _ms(percentile(lag["sluice"], 99)),
        ("max", 5.0),
        f"{len(lag['sluice'])} samples in the throughput and {s.many_streams}-stream windows",
    )
    large = {name: _lag_samples(proxy, ("huge",)) for name, proxy in proxies.items()}
    figures["loop_lag_max_huge_ms"] = Figure(
        "event-loop lag max during the largest requests",
        "ms",
        _ms(max(large["bare"], default=None)),
        _ms(max(large["sluice"], default=None)),
    )
    return figures


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3f}" if unit == "ms" else f"{value:.2f}"


def print_report(report: dict[str, Any], figures: dict[str, Figure]) -> None:
    from rich.console import Console
    from rich.table import Table

    machine = report["machine"]
    console = Console()
    title = (
        f"sluice benchmark ({report['mode']}) · {machine['cpu_model']} · {machine['cpus']} CPUs "
        f"({machine['cpus_usable']} usable) · Python {machine['python']} · mitmproxy {machine['mitmproxy']} "
        f"· sluice {machine['sluice_commit']}"
    )
    table = Table(title=title, title_justify="left")
    for column in ("figure", "bare", "sluice", "sluice/bare", "sluice-bare", "target", "result", "note"):
        table.add_column(column, justify="right" if column in ("bare", "sluice", "sluice/bare") else "left")
    for figure in figures.values():
        result = {True: "[green]PASS[/]", False: "[red]MISS[/]", None: ""}[figure.passed]
        added = figure.added
        table.add_row(
            figure.label,
            _number(figure.bare, figure.unit),
            _number(figure.sluice, figure.unit),
            "—" if figure.ratio is None else f"{figure.ratio:.2f}",
            "—" if added is None else f"{added:+.3f} {figure.unit}",
            figure.target_text(),
            result,
            figure.note,
            style="dim" if figure.target is None else None,
        )
    console.print(table)
    for name, frames in report.get("profiles", {}).items():
        console.print(f"[bold]{name}[/]: top functions by own samples (of {frames['samples'][0][1]})")
        for frame, share in frames["self"][:8]:
            console.print(f"  {share:6.1%}  {frame}")
    if report.get("profiled"):
        console.print(
            "[yellow]Profiled run: py-spy slowed the proxies; compare figures only with profiled runs."
        )
    console.print(
        "Latency figures are percentiles of each proxy's own samples; sluice-bare is the difference of "
        "those percentiles. Client, upstream and proxy share this machine's CPUs."
    )


# --- the run ------------------------------------------------------------------------------------------


async def measure(
    proxies: dict[str, Proxy], work: Workload, deadline: float, profiler: Profiler
) -> dict[str, Any]:
    s = work.settings
    raw: dict[str, Any] = {
        name: {"latency": [], "throughput": [], "agent": [], "huge": [], "bulk": []} for name in proxies
    }
    for name in proxies:
        raw[name]["stream1"] = {"ttfb": [], "events": []}
        raw[name]["stream20"] = {"ttfb": [], "events": []}

    def check_time() -> None:
        if time.monotonic() > deadline:
            raise BenchError("the run went over its time limit")
        for proxy in proxies.values():
            proxy.child.check_alive()

    # Warm both up: imports, caches, the pricing table, the credential pool's first read.
    for proxy in proxies.values():
        await sequential(proxy, work.head(work.small), work.small, s.warmup_requests, "warmup")
        await streams(proxy, work, 2, 1, "warmup")
        await sequential(proxy, work.head(work.agent), work.agent, 1, "warmup")

    agent_head, huge_head, small_head = work.head(work.agent), work.head(work.huge), work.head(work.small)
    phases: list[tuple[str, Callable[[Proxy], Any]]] = [
        ("latency", lambda p: sequential(p, small_head, work.small, s.latency_requests, "latency")),
        ("throughput", lambda p: throughput(p, work)),
        ("stream1", lambda p: streams(p, work, 1, s.single_streams, "stream1")),
        ("stream20", lambda p: streams(p, work, s.many_streams, s.many_stream_waves, "stream20")),
        ("agent", lambda p: sequential(p, agent_head, work.agent, s.agent_requests, "agent")),
        ("huge", lambda p: sequential(p, huge_head, work.huge, s.huge_requests, "huge")),
        ("bulk", lambda p: bulk(p, work)),
    ]
    for label, phase in phases:
        for round_index in range(s.rounds):
            order = ("bare", "sluice") if round_index % 2 == 0 else ("sluice", "bare")
            for name in order:
                check_time()
                with profiler.record(proxies[name], label):
                    result = await phase(proxies[name])
                store = raw[name][label]
                if isinstance(store, dict):  # streams: ttfb and events
                    for part, samples in result.items():
                        store[part].extend(samples)
                elif isinstance(result, list):
                    store.extend(result)
                else:
                    store.append(result)
                await asyncio.sleep(0.1)
    return raw


def run(settings: Settings, *, mode: str, keep: bool, profile_dir: Path | None = None) -> dict[str, Any]:
    from tests.e2e.harness import make_test_ca

    started = time.monotonic()
    deadline = started + settings.deadline_s
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    succeeded = False
    with contextlib.ExitStack() as stack:
        try:
            machine = machine_info()
            work = Workload(client_key="sk-ant-bench-client-" + secrets.token_hex(16), settings=settings)
            raw: dict[str, Any] = {
                "rewrite": {
                    "agent": measure_rewrite(work.agent, settings),
                    "huge": measure_rewrite(work.huge, settings),
                },
                "writer": measure_writer(workdir, settings.writer_rows),
            }
            ca = make_test_ca(workdir / "ca")
            upstream, upstream_port = start_upstream(workdir, ca.leaf_cert, ca.leaf_key)
            stack.callback(upstream.stop)
            from tests.e2e.harness import SITECUSTOMIZE_DIR

            env = _clean_env(
                {
                    "PYTHONPATH": str(SITECUSTOMIZE_DIR),
                    "SLUICE_TEST_HOSTS": f"{PROVIDER_HOST}=127.0.0.1:{upstream_port}",
                    "SLUICE_BENCH_CLIENT_KEY": work.client_key,
                    **{
                        f"SLUICE_BENCH_KEY_{n}": "sk-ant-api03-bench-" + secrets.token_hex(24)
                        for n in (1, 2, 3)
                    },
                }
            )
            proxies: dict[str, Proxy] = {}
            proxies["bare"] = start_mitmdump(
                "bare",
                workdir,
                scripts=[BARE_SCRIPT, LOOPLAG_SCRIPT],
                sets=[],
                env=env,
                upstream_ca=ca.ca_cert,
            )
            stack.callback(proxies["bare"].child.stop)
            config = workdir / "sluice.toml"
            config.write_text(SLUICE_CONFIG)
            proxies["sluice"] = start_mitmdump(
                "sluice",
                workdir,
                scripts=[SLUICE_SCRIPT, LOOPLAG_SCRIPT],
                sets=[f"sluice_config={config}", f"sluice_db={workdir / 'sluice.db'}"],
                env=env,
                upstream_ca=ca.ca_cert,
            )
            stack.callback(proxies["sluice"].child.stop)
            profiler = Profiler(profile_dir)
            raw.update(asyncio.run(measure(proxies, work, deadline, profiler)))
            for proxy in proxies.values():
                proxy.child.stop()  # writes the lag samples
            figures = build_figures(raw, proxies, settings)
            report = {
                "mode": mode,
                "machine": machine,
                "settings": asdict(settings),
                "seconds": round(time.monotonic() - started, 1),
                "figures": {key: figure.as_json() for key, figure in figures.items()},
            }
            if profiler.files:
                report["profiled"] = True
                report["profiles"] = {path.name: top_frames(path) for path in profiler.files}
            print_report(report, figures)
            succeeded = True
            return report
        finally:
            stack.close()
            if keep or not succeeded:
                print(f"bench: work directory kept: {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny sizes, one round, under a minute"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--rounds", type=int, help="override the number of alternating rounds")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy each mitmdump during the first round of every phase into DIR (slows the proxies down)",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.rounds:
        from dataclasses import replace

        settings = replace(settings, rounds=max(1, args.rounds))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(
            settings, mode="quick" if args.quick else "full", keep=args.keep, profile_dir=args.profile
        )
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
