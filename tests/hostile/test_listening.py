"""Safe defaults: `scripts/run` listens on loopback unless the user names another address."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, clean_env, free_port

pytestmark = pytest.mark.e2e


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on `port`, read from /proc (no traffic is sent)."""
    found: set[str] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # /proc writes each 32-bit word in host order (little-endian here).
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, words))
    return found


def run_until_listening(tmp_path: Path, *arguments: str) -> set[str]:
    port = free_port()
    command = [str(REPO_ROOT / "scripts" / "run"), "--listen-port", str(port), *arguments]
    command += ["--set", f"confdir={tmp_path / 'mitm'}", "--set", f"sluice_db={tmp_path / 'sluice.db'}"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if found := listening_addresses(port):
                return found
            time.sleep(0.1)
        raise AssertionError(f"scripts/run never listened on {port} (exit {process.poll()})")
    finally:
        process.terminate()
        process.wait(15)


def test_scripts_run_listens_on_loopback_by_default(tmp_path: Path) -> None:
    assert run_until_listening(tmp_path) == {"127.0.0.1"}


@pytest.mark.parametrize("arguments", [("--listen-host", "127.0.0.2"), ("--set", "listen_host=127.0.0.2")])
def test_an_address_the_user_names_wins(tmp_path: Path, arguments: tuple[str, ...]) -> None:
    assert run_until_listening(tmp_path, *arguments) == {"127.0.0.2"}
