"""`sluice sandbox -- COMMAND`: run COMMAND in a network namespace whose only way out is a sluice of its own.

The steps: build the namespace and its link (state/netns.py); start `mitmdump -s addons/sluice.py` on the
host side, in transparent mode for TCP and answering DNS itself, with `sluice_sandbox` on (the egress
policy, addons/sandbox.py); redirect the namespace's traffic to it; run COMMAND inside with the CA and its
client key in its environment and every real credential out of it; pass its exit status back; tear
everything down, whatever happened (the command's end, its failure, a signal to this process).

The real credentials live only in the mitmdump process, on the host side. mitmdump runs as a subprocess:
nothing here imports mitmproxy.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from rules.config import Config, ConfigError, load_config
from state.netns import Network, NetworkError, allocate, missing_tools
from state.sandbox_env import (
    PROXY_VARIABLES,
    Account,
    SandboxError,
    account_for,
    ca_files,
    command_environment,
)

ADDON_SCRIPT = Path(__file__).resolve().parent.parent / "addons" / "sluice.py"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Request:
    """What `sluice sandbox` was asked to do."""

    config: Path
    db: Path
    command: Sequence[str]
    user: str | None = None
    client: str | None = None
    mitmdump_options: Sequence[str] = ()
    confdir: Path = Path("~/.mitmproxy")
    log: Path | None = None  # where mitmdump's output goes (default: a temporary file, removed)


def run_sandbox(request: Request) -> int:
    """Run the command in a fresh sandbox; return its exit status (128 + N when a signal N ended it).

    What the egress policy refused meanwhile is in the database's table `sandbox_events`."""
    check_can_run()
    config = _load(request.config)
    account = account_for(request.user)
    network = allocate()
    scratch = Path(tempfile.mkdtemp(prefix="sluice-sandbox-"))
    scratch.chmod(0o755)  # the command's user reads the CA bundle here
    signals = _Signals()
    with signals.handled():
        return _run(request, config, account, network, scratch, signals)


def _run(
    request: Request,
    config: Config,
    account: Account | None,
    network: Network,
    scratch: Path,
    signals: _Signals,
) -> int:
    mitmdump: subprocess.Popen[bytes] | None = None
    try:
        network.build()
        proxy_port, dns_port = (
            _free_port(network.host_address, socket.SOCK_STREAM),
            _free_port(network.host_address, socket.SOCK_DGRAM),
        )
        log_path = request.log or scratch / "mitmdump.log"
        mitmdump = _start_mitmdump(request, network, proxy_port, dns_port, log_path)
        _wait_until_ready(mitmdump, network.host_address, (proxy_port, dns_port), log_path, request.confdir)
        network.redirect(proxy_port, dns_port)
        ca = ca_files(request.confdir, scratch)
        env = command_environment(os.environ, config, request.config.parent, request.client, ca, account)
        env["SLUICE_SANDBOX"] = network.namespace  # so the command (and its user) can tell where it runs
        command = subprocess.Popen(_command_line(network, account, request.command), env=env)
        signals.target = command
        status = command.wait()
        return 128 - status if status < 0 else status
    except Interrupted as e:
        return 128 + e.number
    except (NetworkError, OSError) as e:
        raise SandboxError(str(e)) from e
    finally:
        signals.tearing_down = True
        problems = _kill_leftovers(network)
        if mitmdump is not None:
            _stop(mitmdump)
        problems += network.tear_down()
        with contextlib.suppress(OSError):
            for path in sorted(scratch.iterdir()):
                path.unlink()
            scratch.rmdir()
        for problem in problems:
            print(f"sluice sandbox: could not undo: {problem}", file=sys.stderr)


def check_can_run() -> None:
    if sys.platform != "linux":
        raise SandboxError("sluice sandbox needs Linux (network namespaces and nftables)")
    if os.geteuid() != 0:
        raise SandboxError(
            "sluice sandbox needs root to make a network namespace and its nftables rules: run it with sudo"
        )
    if missing := missing_tools():
        needed = " and ".join(missing)
        raise SandboxError(f"sluice sandbox needs {needed} (apt-get install iproute2 nftables)")


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        raise SandboxError(str(e)) from None


def _command_line(network: Network, account: Account | None, command: Sequence[str]) -> list[str]:
    line = ["ip", "netns", "exec", network.namespace]
    if account is not None:
        line += ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--init-groups", "--"]
    return line + list(command)


# mitmdump.


def _start_mitmdump(
    request: Request, network: Network, proxy_port: int, dns_port: int, log_path: Path
) -> subprocess.Popen[bytes]:
    host = network.host_address
    args = [
        _mitmdump_program(),
        "--mode",
        f"transparent@{host}:{proxy_port}",
        # DNS answered by the sandbox addon for every query: the reverse target is never asked.
        "--mode",
        f"reverse:dns://127.0.0.1:53@{host}:{dns_port}",
        "-s",
        str(ADDON_SCRIPT),
        "--set",
        f"confdir={request.confdir}",
        "--set",
        f"sluice_config={request.config.resolve()}",
        "--set",
        f"sluice_db={request.db.resolve()}",
        "--set",
        "sluice_sandbox=true",
        "--set",
        "connection_strategy=lazy",
    ]
    for option in request.mitmdump_options:
        args += ["--set", option]
    env = {name: value for name, value in os.environ.items() if name.upper() not in PROXY_VARIABLES}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            args,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # the terminal's Ctrl-C is for the command; sluice stops last
            preexec_fn=_die_with_parent,
        )


def _mitmdump_program() -> str:
    beside = Path(sys.executable).parent / "mitmdump"
    return str(beside) if beside.exists() else "mitmdump"


def _die_with_parent() -> None:
    """In the child: SIGTERM when this process dies, even by SIGKILL (no sluice outlives its sandbox)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_until_ready(
    process: subprocess.Popen[bytes], host: str, ports: tuple[int, int], log_path: Path, confdir: Path
) -> None:
    """Until mitmdump has written its CA and listens on both ports (the DNS one comes after the TCP one: a
    query sent before would be refused, and the command's lookups fail)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    ca = confdir.expanduser() / "mitmproxy-ca-cert.pem"
    proxy_port, dns_port = ports
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SandboxError(f"sluice did not start (exit status {process.returncode}):\n{_tail(log_path)}")
        if ca.exists() and _bound(host, proxy_port, "tcp") and _bound(host, dns_port, "udp"):
            return
        time.sleep(0.05)
    raise SandboxError(f"sluice did not start in {START_TIMEOUT_S:.0f}s:\n{_tail(log_path)}")


def _bound(host: str, port: int, table: str) -> bool:
    """Whether a socket is bound to `host:port` in the kernel's `/proc/net/tcp` or `udp` table (listening,
    for TCP). Neither connecting (transparent mode takes a connection that was not redirected for an error,
    and mitmdump stops on errors during start-up) nor binding (which would take the port from mitmdump for
    that moment) is a safe probe."""
    wanted = "{:08X}:{:04X}".format(int.from_bytes(socket.inet_aton(host), "little"), port)
    listening = "0A" if table == "tcp" else "07"  # TCP_LISTEN; an unconnected UDP socket shows TCP_CLOSE
    try:
        lines = Path("/proc/net", table).read_text().splitlines()[1:]
    except OSError as e:
        raise SandboxError(f"cannot read /proc/net/{table} to see sluice start: {e}") from None
    return any(fields[1] == wanted and fields[3] == listening for fields in map(str.split, lines))


def _free_port(host: str, kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT, so the writer drains into the database; SIGKILL if it does not stop in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Signals and leftovers.


class Interrupted(Exception):
    """A signal asked the sandbox to stop before its command had started."""

    def __init__(self, number: int) -> None:
        super().__init__(f"stopped by signal {number} while setting up")
        self.number = number


class _Signals:
    """For the sandbox's whole life, SIGTERM, SIGHUP and SIGINT sent to this process are handled, so that
    nothing stops it before its tear-down: before the command starts, they stop the set-up (`Interrupted`);
    while it runs, they are passed on to it (a second one as SIGKILL, for a command that ignores the first);
    after it ended, they are ignored while everything is torn down."""

    HANDLED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def __init__(self) -> None:
        self.target: subprocess.Popen[bytes] | None = None
        self.tearing_down = False
        self._forwarded = 0

    @contextlib.contextmanager
    def handled(self) -> Iterator[None]:
        previous = {number: signal.signal(number, self._handle) for number in self.HANDLED}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _handle(self, number: int, _frame: FrameType | None) -> None:
        if self.tearing_down:
            return
        if self.target is None:
            raise Interrupted(number)
        if self.target.poll() is None:
            self._forwarded += 1
            with contextlib.suppress(ProcessLookupError):
                self.target.send_signal(number if self._forwarded == 1 else signal.SIGKILL)


def _kill_leftovers(network: Network, timeout: float = 5.0) -> list[str]:
    """End every process still in the namespace (what the command left running): SIGTERM, then SIGKILL."""
    try:
        pids = network.pids()
    except NetworkError:
        return []  # no namespace (set-up failed before it existed): nothing can be in it
    for number in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, number)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.05)
        if not pids:
            return []
    return [f"processes {pids} in {network.namespace} did not end"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is gone for our purposes
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
