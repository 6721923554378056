"""Running `sluice sandbox` in tests: the command line, the checks that nothing is left behind, and a
namespace of the test's own where an attacker's server can stand.

The sandbox needs root, network namespaces, iproute2 and nftables; `SKIP_REASON` says which is missing
(scripts/test installs nftables when it runs as root). Its mitmdump gets the e2e name mapping
(tests/e2e/sitecustomize) through the environment, so it reaches the fake provider under the real host
names, and trusts the fake's CA upstream; the sandbox's own CA lives in the test's directory.

Traffic goes only to loopback and to addresses of namespaces these tests (or the sandbox) created.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.e2e.harness import REPO_ROOT, SITECUSTOMIZE_DIR, clean_env
from tests.fake_provider import FakeProvider

SANDBOX_TIMEOUT = 60.0


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "sluice sandbox needs Linux"
    if os.geteuid() != 0:
        return "sluice sandbox needs root (network namespaces, nftables): run the suite as root"
    missing = [tool for tool in ("ip", "nft", "curl") if shutil.which(tool) is None]
    if missing:
        return f"sluice sandbox tests need {', '.join(missing)} (scripts/test installs nftables as root)"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"network namespaces are not available here: {probe.stderr.strip()}"
    return None


SKIP_REASON = _skip_reason()


def sandbox_env(fake: FakeProvider, hosts: str = "", **extra: str) -> dict[str, str]:
    """The environment `sluice sandbox` runs in: the fake behind the provider names for its mitmdump."""
    mapping = ",".join(filter(None, (fake.hosts_env(), hosts)))
    return clean_env(
        {
            "PYTHONPATH": os.pathsep.join((str(REPO_ROOT), str(SITECUSTOMIZE_DIR))),
            "PYTHONUNBUFFERED": "1",
            "SLUICE_TEST_HOSTS": mapping,
            **extra,
        }
    )


def sandbox_args(
    workdir: Path, fake: FakeProvider, config_toml: str, command: Sequence[str], options: Sequence[str] = ()
) -> list[str]:
    config = workdir / "sluice.toml"
    config.write_text(config_toml)
    return [
        sys.executable,
        "-c",
        "import sys; from state.cli import main; sys.exit(main())",
        "sandbox",
        "--config",
        str(config),
        "--db",
        str(workdir / "sluice.db"),
        "--confdir",
        str(workdir / "mitm"),
        "--log",
        str(workdir / "mitmdump.log"),
        "--set",
        f"ssl_verify_upstream_trusted_ca={fake.ca_pem}",
        *options,
        "--",
        *command,
    ]


def run_sandbox(
    workdir: Path,
    fake: FakeProvider,
    config_toml: str,
    command: Sequence[str],
    env: dict[str, str],
    options: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        sandbox_args(workdir, fake, config_toml, command, options),
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=SANDBOX_TIMEOUT,
        check=False,
    )


def start_sandbox(
    workdir: Path, fake: FakeProvider, config_toml: str, command: Sequence[str], env: dict[str, str]
) -> subprocess.Popen[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        sandbox_args(workdir, fake, config_toml, command),
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def wait_for[T](check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := check()) is not None:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} after {timeout}s")


def read_file(path: Path) -> str | None:
    return path.read_text() if path.exists() and path.read_text().endswith("\n") else None


# What a sandbox leaves behind.


def processes_with(marker: str) -> list[int]:
    """Processes whose command line contains `marker` (other than this one)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
            if marker in cmdline and stat.rsplit(")", 1)[-1].split()[0] != "Z":
                found.append(int(entry.name))
    return found


def leftovers(namespace: str, markers: Sequence[str]) -> list[str]:
    """Whatever of the sandbox `namespace` (sluice-TAG) still exists: namespace, links, nftables table,
    resolv.conf directory, and processes whose command line holds one of `markers`."""
    tag = namespace.removeprefix("sluice-")
    found = []
    if namespace in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
        found.append(f"namespace {namespace}")
    for link in (f"slc{tag}h", f"slc{tag}n"):
        if Path("/sys/class/net", link).exists():
            found.append(f"link {link}")
    if subprocess.run(["nft", "list", "table", "inet", f"sluice_{tag}"], capture_output=True).returncode == 0:
        found.append(f"nftables table sluice_{tag}")
    if Path("/etc/netns", namespace).exists():
        found.append(f"/etc/netns/{namespace}")
    found += [f"process {pid} ({marker})" for marker in markers for pid in processes_with(marker)]
    return found


# A namespace of the test's own, for an attacker's server.


class TrapNamespace:
    """A network namespace linked to the host by a veth pair: the host side holds `host_address`, the
    namespace `address`. `serve(factory)` builds a server (a Trap) inside it, bound to `address`."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"sluicetrap-{tag}"
        self.link = f"sltrap{tag}"
        block = secrets.randbelow(16384)
        base = f"10.202.{block // 64}.{(block % 64) * 4}"
        prefix, last = base.rsplit(".", 1)
        self.host_address = f"{prefix}.{int(last) + 1}"
        self.address = f"{prefix}.{int(last) + 2}"

    def __enter__(self) -> TrapNamespace:
        run = _checked
        run("ip", "netns", "add", self.name)
        try:
            run("ip", "link", "add", self.link, "type", "veth", "peer", "name", "trap0", "netns", self.name)
            run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.link)
            run("ip", "link", "set", self.link, "up")
            run("ip", "-n", self.name, "addr", "add", f"{self.address}/30", "dev", "trap0")
            run("ip", "-n", self.name, "link", "set", "trap0", "up")
            run("ip", "-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", self.link], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def serve[T](self, factory: Callable[[], T]) -> T:
        """`factory()` called on a thread that has entered the namespace: its sockets live there."""
        result: list[T] = []
        errors: list[BaseException] = []

        def inside() -> None:
            try:
                with open(f"/run/netns/{self.name}") as handle:
                    os.setns(handle.fileno(), os.CLONE_NEWNET)
                result.append(factory())
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=inside)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]


def _checked(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


def started(process: subprocess.Popen[str], workdir: Path) -> str:
    """The sandbox's namespace, once its command has written it to `ns.txt` (`echo "$SLUICE_SANDBOX"`);
    a sandbox whose command never does is stopped before the test fails."""
    try:
        return wait_for(lambda: read_file(workdir / "ns.txt"), "the command never started").strip()
    except AssertionError:
        process.terminate()
        process.communicate(timeout=SANDBOX_TIMEOUT)
        raise


def stop(
    process: subprocess.Popen[str], namespace: str, number: int = signal.SIGTERM
) -> tuple[int, str, str]:
    """Signal the sandbox (as `kill` does) and wait for it to tear down. Should it not finish, the processes
    in its namespace are killed so that it does (nothing of a failed test is left running), and the test
    fails."""
    process.send_signal(number)
    try:
        stdout, stderr = process.communicate(timeout=SANDBOX_TIMEOUT)
    except subprocess.TimeoutExpired:
        pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout
        for pid in pids.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        process.communicate(timeout=SANDBOX_TIMEOUT)
        raise AssertionError(
            f"the sandbox did not stop in {SANDBOX_TIMEOUT}s after signal {number}"
        ) from None
    return process.returncode, stdout, stderr
