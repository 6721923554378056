"""A real PostgreSQL server for tests: a throwaway cluster in a temporary directory, on a free loopback port.

    with PostgresServer() as server:          # initdb, then start on 127.0.0.1:<free port>
        url = server.create_database()        # postgresql://sluice:<password>@127.0.0.1:<port>/test_1
        server.stop()                         # connections are refused; the data stays
        server.start()                        # the same data, on the same port
    # close(): no process and no directory left

The binaries (`initdb`, `postgres`) come from the PATH or, where Debian puts them, from
/usr/lib/postgresql/<version>/bin (the newest version); `scripts/test` installs Debian's `postgresql` when
there are none. PostgreSQL refuses to run as root, so under root the cluster belongs to, and the server
runs as, the unprivileged `nobody`; otherwise as the current user. Only the superuser `postgres` may log in
over the Unix socket (in a directory only the server's user can enter), without a password; everyone else
logs in over 127.0.0.1 with a password (scram-sha-256), the login role `sluice` included: its password is in
every URL handed out, so tests can check that it never reaches a log.

No server outlives the test session: the fixtures close theirs, an atexit hook closes the rest, and a server
whose session was killed before either could run is stopped, by its postmaster.pid, by the next session
that starts one (its directory names the process that owned it).

Nothing here imports pytest: the fixtures live in `tests/conftest.py`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit

import psycopg
from psycopg import sql

from tests.e2e.harness import free_port

HOST = "127.0.0.1"
LOGIN_ROLE = "sluice"
SUPERUSER = "postgres"
# Root may not run PostgreSQL: the cluster is handed to this user instead.
UNPRIVILEGED_USER = "nobody"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
PROC = Path("/proc")
DIR_PREFIX = "sluice-pg-"
# Generous: two servers (one per xdist worker) start on a loaded 2-core machine.
INITDB_TIMEOUT = 120.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
POLL_INTERVAL = 0.05
BIND_ATTEMPTS = 5
# A throwaway cluster: nothing needs to survive a crash, and three proxies' pools connect at once.
SETTINGS = {
    "listen_addresses": HOST,
    "unix_socket_permissions": "0700",
    "password_encryption": "scram-sha-256",
    "max_connections": "300",
    "shared_buffers": "32MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "jit": "off",
    "timezone": "UTC",
    "log_timezone": "UTC",
    "logging_collector": "off",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}
PG_HBA = f"""\
# Written by tests/postgres.py. The superuser over the Unix socket, whose directory only the server's user
# (and root) can enter; every other role with its password, over loopback TCP only.
local  all  {SUPERUSER}                trust
host   all  all        {HOST}/32  scram-sha-256
"""


class PostgresError(RuntimeError):
    """The test PostgreSQL server could not be set up, started or stopped; the message has its log's tail."""


# Finding PostgreSQL.


def _version_key(directory: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", directory.name))


def find_binaries(search_path: str | None = None, versioned_root: Path = DEBIAN_ROOT) -> Path | None:
    """The directory holding `initdb` and `postgres`: the one `initdb` on the PATH lives in (symlinks
    followed), else the newest `<versioned_root>/<version>/bin`, where Debian keeps them, off the PATH."""
    on_path = shutil.which("initdb", path=search_path)
    candidates = [Path(on_path).resolve().parent] if on_path else []
    if versioned_root.is_dir():
        versions = sorted((d for d in versioned_root.iterdir() if _version_key(d)), key=_version_key)
        candidates += [version / "bin" for version in reversed(versions)]
    for directory in candidates:
        if all(os.access(directory / program, os.X_OK) for program in ("initdb", "postgres")):
            return directory
    return None


def unavailable_reason(search_path: str | None = None, versioned_root: Path = DEBIAN_ROOT) -> str | None:
    """Why no PostgreSQL server can be started here, or None when one can."""
    if find_binaries(search_path, versioned_root) is None:
        return (
            f"no PostgreSQL server (initdb and postgres, on the PATH or in {DEBIAN_ROOT}/<version>/bin): "
            "apt-get install postgresql (scripts/test installs it when missing)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            return f"running as root and there is no {UNPRIVILEGED_USER!r} user to run PostgreSQL as"
    return None


def in_ci() -> bool:
    """True under a CI service (CI=true), where a PostgreSQL test that cannot run is a failure, not a skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# Processes, by /proc (Linux).


def start_time_of(pid: int) -> str | None:
    """The process's start time in clock ticks, which tells it from a later process given the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def still_alive(pid: int, start_time: str) -> bool:
    """Whether the process `start_time_of` saw as `pid` still runs."""
    return start_time_of(pid) == start_time


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid`: a postmaster's backends and auxiliary processes."""
    children: list[int] = []
    if not PROC.is_dir():
        return children
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it exited while we looked
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def _wait_gone(pid: int, start_time: str | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while start_time is not None and still_alive(pid, start_time):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def _kill_postmaster(pid: int, timeout: float) -> None:
    """Immediate shutdown (SIGQUIT: the postmaster ends its children, then itself); SIGKILL for all of them
    when that does not finish within `timeout`."""
    start_time = start_time_of(pid)
    children = [(child, start_time_of(child)) for child in child_pids(pid)]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
    if _wait_gone(pid, start_time, timeout):
        return
    for process, started in [(pid, start_time), *children]:
        if started is not None and still_alive(process, started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process, signal.SIGKILL)


def sweep_orphans(parent: Path | None = None) -> None:
    """Stops the servers, and removes the directories, of sessions killed before they could clean up.

    A directory is an orphan when the process its `owner` file names has exited; one being set up has no
    `owner` file yet and is left alone, as is everything of a live session. Without /proc, nothing is."""
    if not PROC.is_dir():
        return
    for directory in (parent or Path(tempfile.gettempdir())).glob(f"{DIR_PREFIX}*"):
        try:
            owner_pid, owner_start = (directory / "owner").read_text().split()
        except (OSError, ValueError):
            continue
        if still_alive(int(owner_pid), owner_start):
            continue
        try:
            postmaster = int((directory / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            postmaster = None
        if postmaster is not None and str(directory) in _cmdline(postmaster):
            _kill_postmaster(postmaster, STOP_TIMEOUT)
        shutil.rmtree(directory, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


_live: set[PostgresServer] = set()
_swept = False


@atexit.register
def _close_leftovers() -> None:
    for server in list(_live):
        server.close()


# The server.


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PostgresServer:
    """One PostgreSQL cluster in its own temporary directory, started on a free loopback port.

    `create_database()` hands out a fresh database and its URL; `stop()` and `start()` keep the data and
    the port; `close()` stops the server and removes the directory. Use as a context manager.
    """

    def __init__(self, bindir: Path | None = None) -> None:
        global _swept
        found = bindir or find_binaries()
        if found is None:
            raise PostgresError(unavailable_reason() or "no PostgreSQL binaries")
        self.bindir = found
        self.user = LOGIN_ROLE
        self.password = secrets.token_hex(16)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._databases = 0
        self._run_as: dict[str, Any] = {}
        self.os_user = pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            account = pwd.getpwnam(UNPRIVILEGED_USER)
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            self.os_user = UNPRIVILEGED_USER
        if not _swept:
            _swept = True
            sweep_orphans()
        self.directory = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        self.data_dir = self.directory / "data"
        self.socket_dir = self.directory / "socket"
        self.log_path = self.directory / "postgres.log"
        _live.add(self)
        try:
            self._set_up()
            self._start_on_a_free_port()
            self._create_login_role()
        except BaseException:
            self.close()
            raise

    # Setting up.

    def _set_up(self) -> None:
        self._check_reachable()
        self.socket_dir.mkdir(mode=0o700)
        self.log_path.touch(mode=0o600)
        if self._run_as:
            for path in (self.directory, self.socket_dir, self.log_path):
                os.chown(path, self._run_as["user"], self._run_as["group"])
        # Which process owns the directory: `sweep_orphans` cleans up only after one that has exited.
        (self.directory / "owner").write_text(f"{os.getpid()} {start_time_of(os.getpid())}\n")
        result = self._run(
            [
                str(self.bindir / "initdb"),
                f"--pgdata={self.data_dir}",
                f"--username={SUPERUSER}",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=INITDB_TIMEOUT,
        )
        if result.returncode != 0:
            raise PostgresError(f"initdb failed ({result.returncode}):\n{self.log_tail()}")
        settings = {**SETTINGS, "unix_socket_directories": str(self.socket_dir)}
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/postgres.py\n")
            conf.writelines(f"{name} = {_conf_value(value)}\n" for name, value in settings.items())
        (self.data_dir / "pg_hba.conf").write_text(PG_HBA)

    def _check_reachable(self) -> None:
        """The server's user must be able to walk down to its directory (a TMPDIR under /root is not)."""
        if not self._run_as:
            return
        for parent in self.directory.parents:
            if not parent.stat().st_mode & 0o001:
                raise PostgresError(
                    f"{UNPRIVILEGED_USER} cannot enter {parent} to reach {self.directory}: "
                    "set TMPDIR to a directory everyone may enter (e.g. /tmp)"
                )

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.run(argv, timeout=timeout, check=False, **self._process_options(log))

    def _process_options(self, log: IO[bytes]) -> dict[str, Any]:
        """How every PostgreSQL program runs: as the server's user, in its directory, output into the log."""
        # A clean environment: nothing from the caller's PG* variables (PGPORT, PGDATA, ...) reaches it.
        env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(self.directory)}
        env |= {"LC_ALL": "C", "TZ": "UTC"}
        return {
            "stdin": subprocess.DEVNULL,
            "stdout": log,
            "stderr": subprocess.STDOUT,
            "cwd": self.directory,
            "env": env,
            **self._run_as,
        }

    def _start_on_a_free_port(self) -> None:
        for _ in range(BIND_ATTEMPTS):
            self.port = free_port()
            try:
                self.start()
                return
            except PostgresError as error:
                # Another process took the port between free_port() and the bind: pick another.
                if "Address already in use" not in str(error):
                    raise
        raise PostgresError(f"no free loopback port after {BIND_ATTEMPTS} attempts:\n{self.log_tail()}")

    def _create_login_role(self) -> None:
        with self.admin_connect() as conn:
            # The password is hashed here, by libpq: only its SCRAM verifier reaches the server.
            verifier = conn.pgconn.encrypt_password(
                self.password.encode(), self.user.encode(), b"scram-sha-256"
            )
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(verifier.decode())
                )
            )

    # Running.

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Starts the server on its port with the data it had, and returns once it accepts connections."""
        if self.running:
            raise PostgresError(f"PostgreSQL is already running on port {self.port}")
        log_start = self.log_size()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)],
                # Its own session: a Ctrl-C at the terminal reaches pytest, whose teardown stops it.
                start_new_session=True,
                **self._process_options(log),
            )
        self._wait_ready(self._process, time.monotonic() + timeout, log_start)

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float, log_start: int) -> None:
        while True:
            code = process.poll()
            if code is not None:
                self._process = None
                raise PostgresError(
                    f"postgres exited ({code}) while starting on port {self.port}:\n"
                    + self.log_tail(since=log_start)
                )
            try:
                with self.admin_connect(connect_timeout=5):
                    return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PostgresError(
                        f"postgres did not accept connections on port {self.port} in time ({error}):\n"
                        + self.log_tail(since=log_start)
                    ) from error
            time.sleep(POLL_INTERVAL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Fast shutdown (SIGINT: open connections are ended, the data is kept); an immediate one, then
        SIGKILL, if it takes longer than `timeout`. Returns once every server process has exited."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_postmaster(process.pid, timeout=10.0)
                process.wait(timeout)

    def close(self) -> None:
        """Stops the server and removes its directory, data included. Safe to call twice."""
        self.stop()
        if self.directory.exists():
            # By the postmaster.pid, in case a postmaster runs that this object did not start.
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
                if str(self.data_dir) in _cmdline(pid):
                    _kill_postmaster(pid, STOP_TIMEOUT)
            shutil.rmtree(self.directory)
        _live.discard(self)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PostgresServer {HOST}:{self.port} pid={self.pid} dir={self.directory}>"

    # Databases.

    def admin_connect(self, dbname: str = "postgres", connect_timeout: int = 10) -> psycopg.Connection[Any]:
        """A superuser connection over the Unix socket, in autocommit mode."""
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=connect_timeout,
        )

    def url(self, dbname: str) -> str:
        """`postgresql://sluice:<password>@127.0.0.1:<port>/<dbname>`."""
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"postgresql://{credentials}@{HOST}:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new, empty database owned by the login role (which may create tables in it): its URL."""
        self._databases += 1
        dbname = f"test_{self._databases}"
        with self.admin_connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(dbname), sql.Identifier(self.user)
                )
            )
        return self.url(dbname)

    def drop_database(self, url: str) -> None:
        """Drops the database a URL from `create_database` names, ending its open connections."""
        dbname = unquote(urlsplit(url).path.lstrip("/"))
        with self.admin_connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))

    # Logs.

    def log_size(self) -> int:
        """Where the log ends now: `log_text(since=...)` reads what was written after."""
        return self.log_path.stat().st_size

    def log_text(self, since: int = 0) -> str:
        """What initdb and the server wrote into `log_path` (the server logs to stderr), from byte `since`."""
        with self.log_path.open("rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def log_tail(self, since: int = 0, lines: int = 40) -> str:
        return "\n".join(self.log_text(since).splitlines()[-lines:])
