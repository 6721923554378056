"""The processes a benchmark run starts (bench upstream, two mitmdumps, py-spy) and how it stops them.

Each child runs in a session of its own, so a terminal's Ctrl-C reaches only the benchmark, which then
stops every child itself: SIGINT first (mitmproxy runs its addons' `done`, so sluice drains its queue and
the lag addon writes its samples), SIGKILL if that takes too long.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The test harness's: proxy settings stripped from the environment, a free loopback port, the venv's mitmdump.
from tests.e2e.harness import clean_env, free_port, mitmdump_path

ROOT = Path(__file__).resolve().parents[1]
SLUICE_SCRIPT = ROOT / "addons" / "sluice.py"
BARE_SCRIPT = ROOT / "bench" / "bare_stream.py"
LOOPLAG_SCRIPT = ROOT / "bench" / "looplag.py"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (a process died, a response was wrong)."""


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process and the processes it started (sluice's ops process) have used so
    far, every thread of each: what the proxy costs the machine."""
    if Path(f"/proc/{pid}/stat").exists():
        return sum(_proc_cpu_seconds(each) for each in _with_descendants(pid))
    import psutil  # not on Linux: the `bench` extra installs it

    process = psutil.Process(pid)
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        try:
            times = each.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


@dataclass(frozen=True)
class Usage:
    """What a proxy process has used so far: CPU by thread (its main thread, sluice's writer thread, every
    other thread of it) and by the processes it started, and its read and write system calls (Linux's
    /proc/PID/io `syscr`, `syscw`; its own threads, not its children's). Subtract two to get a phase's."""

    main_s: float = 0.0
    writer_s: float = 0.0
    other_threads_s: float = 0.0
    children_s: float = 0.0
    read_calls: int = 0
    write_calls: int = 0

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.main_s - other.main_s,
            self.writer_s - other.writer_s,
            self.other_threads_s - other.other_threads_s,
            self.children_s - other.children_s,
            self.read_calls - other.read_calls,
            self.write_calls - other.write_calls,
        )


WRITER_THREAD = "sluice-writer"  # state/writer.py names its thread so (state/threads.py)


def usage(pid: int) -> Usage | None:
    """A snapshot of `pid`'s use, thread by thread; None where /proc cannot say (not Linux)."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.exists():
        return None
    main = writer = other = 0.0
    for task in tasks.iterdir():
        try:
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue
        seconds = _stat_cpu_seconds(task / "stat")
        if task.name == str(pid):
            main += seconds
        elif comm == WRITER_THREAD:
            writer += seconds
        else:
            other += seconds
    children = sum(_proc_cpu_seconds(each) for each in _with_descendants(pid) if each != pid)
    io = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            key, _, value = line.partition(":")
            io[key] = int(value)
    return Usage(main, writer, other, children, io.get("syscr", 0), io.get("syscw", 0))


def _stat_cpu_seconds(stat: Path) -> float:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone since it was listed
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone since it was listed
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _with_descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return found


_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    """The last resort, should an interrupt land while the children are being stopped."""
    for process in list(_LIVE):
        if process.poll() is None:
            process.kill()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_command(measure: Callable[[], dict[str, Any]], json_path: Path | None) -> int:
    """A benchmark as a command: SIGTERM stops it as Ctrl-C does (every child stopped on the way out), its
    failure is one line on stderr, and its report goes to `json_path` too. Returns the exit status."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = measure()
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return 0


@contextlib.contextmanager
def work_directory(prefix: str, keep: bool) -> Iterator[Path]:
    """A fresh temporary directory for a run's logs and databases: removed after a run that finished,
    unless `keep`; kept (and named on stderr) after one that failed, to look into."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    except BaseException:
        print(f"bench: work directory kept: {workdir}", file=sys.stderr)
        raise
    if keep:
        print(f"bench: work directory kept: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


class Child:
    """A process this benchmark started."""

    def __init__(
        self, name: str, args: list[str], *, env: dict[str, str], log: Path, stdout_pipe: bool = False
    ) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                args,
                cwd=log.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else sink,
                stderr=sink,
                start_new_session=True,
            )
        _LIVE.add(self.process)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{self.log_summary()}")

    def log_summary(self, lines: int = 15) -> str:
        """The log without traceback frames: what was logged, and each exception's own line."""
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace").splitlines()
            frames = (" ", "Traceback", "During handling")
            said = [line for line in text if line and not line.startswith(frames)]
            return "\n".join(said[-lines:])
        return ""

    def wait_ready(self, ready: Callable[[], bool], timeout: float, poll_s: float = 0.05) -> None:
        """Until `ready()` says so; stopped, and BenchError with its log, if it exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.check_alive()
            except BenchError:
                self.stop()
                raise
            if ready():
                return
            time.sleep(poll_s)
        self.stop()
        raise BenchError(f"{self.name} not ready after {timeout:g}s:\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        _LIVE.discard(self.process)


def start_upstream(workdir: Path, cert: Path, key: Path, bomb_bytes: int = 0) -> tuple[Child, int]:
    """bench/upstream.py in its own process; returns it and the port it listens on."""
    args = [sys.executable, "-m", "bench.upstream", "--cert", str(cert), "--key", str(key)]
    args += ["--bomb-bytes", str(bomb_bytes)]
    child = Child(
        "bench upstream",
        args,
        env=clean_env({"PYTHONPATH": str(ROOT)}),
        log=workdir / "upstream.log",
        stdout_pipe=True,
    )
    assert child.process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(child.process.stdout, selectors.EVENT_READ)
        ready = selector.select(START_TIMEOUT_S)
    line = child.process.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("port "):
        child.stop()
        raise BenchError(f"bench upstream did not start ({line!r}):\n{child.log_tail()}")
    return child, int(line.split()[1])


@dataclass
class Proxy:
    """One running proxy (a mitmdump, or a peer): how to reach it, and when each phase loaded it (for the lag
    samples)."""

    name: str  # "bare" | "sluice" | a peer's (bench/peers.py)
    child: Child
    port: int
    client_tls: ssl.SSLContext | None  # trusts this mitmdump's own CA; None for a base-URL peer
    lag_file: Path | None  # bench/looplag.py's samples; None where it is not loaded (a peer)
    windows: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    base_path: str = ""  # a base-URL (reverse) proxy: plain HTTP to it, paths under this prefix; no CONNECT

    def window(self, phase: str, start: float, end: float) -> None:
        """A span of `time.monotonic()` during which `phase` loaded this proxy."""
        self.windows.setdefault(phase, []).append((start, end))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.child.pid)

    def usage(self) -> Usage | None:
        return usage(self.child.pid)


def start_mitmdump(
    name: str,
    workdir: Path,
    *,
    scripts: Sequence[Path],
    sets: Sequence[str],
    env: dict[str, str],
    upstream_ca: Path,
) -> Proxy:
    """mitmdump on a free loopback port with `scripts` and bench/looplag.py; returns once it accepts."""
    home = workdir / name
    home.mkdir()
    confdir = home / "mitm"
    lag_file = home / "looplag.json"
    port = free_port()
    args = [str(mitmdump_path()), "--listen-host", "127.0.0.1", "--listen-port", str(port)]
    args += ["--set", f"confdir={confdir}", "--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"]
    # The console flow dump costs both proxies alike and is no part of what is measured.
    args += ["--set", "flow_detail=0", "--set", "termlog_verbosity=warn"]
    for script in [*scripts, LOOPLAG_SCRIPT]:
        args += ["-s", str(script)]
    for setting in [*sets, f"bench_looplag_file={lag_file}"]:
        args += ["--set", setting]
    child = Child(f"mitmdump ({name})", args, env=env, log=home / "mitmdump.log")
    ca = confdir / "mitmproxy-ca-cert.pem"
    child.wait_ready(lambda: ca.exists() and _accepts(port), START_TIMEOUT_S)
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["http/1.1"])
    return Proxy(name, child, port, context, lag_file)


class Profiler:
    """`--profile DIR`: py-spy samples each mitmdump, GIL holders only (so idle threads do not count),
    through the first round of every phase, into DIR/<proxy>-<phase>.txt: collapsed stacks, as
    flamegraph.pl and speedscope read them. Sampling slows the proxies: a profiled run's figures compare
    only with another profiled run's."""

    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.files: list[Path] = []
        self._program: str | None = None
        if out_dir is not None:
            here = str(Path(sys.executable).parent)
            self._program = shutil.which("py-spy", path=here) or shutil.which("py-spy")
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
        args += ["--gil", "--nonblocking", "--rate", "250", "--output", str(path)]
        spy = Child(f"py-spy ({proxy.name})", args, env=clean_env({}), log=path.with_suffix(".log"))
        time.sleep(0.5)  # attaching takes a moment
        try:
            yield
        finally:
            spy.stop(timeout=30)


def top_frames(collapsed: Path, count: int = 12) -> dict[str, object]:
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

    def top(table: dict[str, int], keep: tuple[str, ...] = ()) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda item: -item[1])
        if keep:
            ranked = [item for item in ranked if any(part in item[0] for part in keep)]
        return [(frame, round(weight / total, 4)) for frame, weight in ranked[:count]] if total else []

    return {
        "samples": total,
        "self": top(own),
        # sluice's own code: which hook, which rule
        "sluice_inclusive": top(under, ("(addons/", "(rules/", "(state/")),
    }
