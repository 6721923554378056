"""The README's five-minute path, walked literally: its shell blocks, run as a newcomer would, in a fresh
home directory, against the fake provider reached under the real host name.

The commands are taken from the README as written. The test changes only what a test must: the port
(8080 → a free one), the upstream CA mitmdump trusts (the fake's, appended to the proxy commands), and for
mitmweb no browser and free ports. `scripts/run` runs for real, on a copy of the checkout whose `.venv` is
the test's own virtualenv already installed (so it installs nothing). The first terminal's lines run up to
`scripts/run`, which stays up in the background; the second terminal's lines run after it, in a shell of
their own; `sluice usage` is repeated until the row is there (rows are written off the request path).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, SITECUSTOMIZE_DIR, clean_env, free_port
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e

SECTION = "## Five minutes to a metered call"
SERVER_COMMANDS = ("scripts/run", ".venv/bin/mitmweb")
DEADLINE_S = 60.0
CLI = "from state.cli import main; raise SystemExit(main())"


def five_minute_blocks(readme: str) -> list[str]:
    """The ```sh blocks of the README's five-minute section, in order."""
    start = readme.index(SECTION)
    end = readme.index("\n## ", start + len(SECTION))
    return re.findall(r"```sh\n(.*?)```", readme[start:end], flags=re.DOTALL)


def split_at_servers(blocks: list[str]) -> tuple[str, str, str, str, str]:
    """(first terminal's lines, `scripts/run` line, second terminal's lines, mitmweb line, usage line)."""
    lines = "".join(blocks).splitlines()
    run = next(i for i, line in enumerate(lines) if line.startswith("scripts/run"))
    web = next(i for i, line in enumerate(lines) if line.startswith(".venv/bin/mitmweb"))
    usage = next(line for line in lines if line.startswith(".venv/bin/sluice usage"))
    return "\n".join(lines[:run]), lines[run], "\n".join(lines[run + 1 : web]), lines[web], usage


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout as after a first `scripts/run`: the sources, and a `.venv` that is this test run's."""
    root = tmp_path / "sluice"
    root.mkdir()
    for name in ("addons", "rules", "state", "scripts", "pyproject.toml", "README.md"):
        (root / name).symlink_to(REPO_ROOT / name)
    bin_dir = Path(sys.executable).parent
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    wrappers = {
        "python": f'exec {shlex.quote(sys.executable)} "$@"',
        "mitmdump": f'exec {shlex.quote(str(bin_dir / "mitmdump"))} "$@"',
        "mitmweb": f'exec {shlex.quote(str(bin_dir / "mitmweb"))} "$@"',
        "sluice": f'exec {shlex.quote(sys.executable)} -c "{CLI}" "$@"',
    }
    for name, line in wrappers.items():
        (venv / name).write_text(f"#!/usr/bin/env bash\n{line}\n")
        (venv / name).chmod(0o755)
    # What scripts/_venv.sh writes after installing: the pyproject it installed, with the test extras.
    digest = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (root / ".venv" / ".sluice-installed").write_text(f"{digest} test\n")
    return root


class Background:
    """A README command left running, as in a terminal of its own."""

    def __init__(self, script: str, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["bash", "-c", script],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while text not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared:\n{self.text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def background() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for process in started:
        process.stop()


def test_the_five_minute_path_works_as_written(
    fake: FakeProvider, checkout: Path, tmp_path: Path, background: list[Background]
) -> None:
    first, run, second, mitmweb, usage = split_at_servers(
        five_minute_blocks((REPO_ROOT / "README.md").read_text())
    )
    port = str(free_port())
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(
        {
            "HOME": str(home),
            "PYTHONPATH": f"{SITECUSTOMIZE_DIR}:{REPO_ROOT}",
            "SLUICE_TEST_HOSTS": fake.hosts_env(),
            "PYTHONUNBUFFERED": "1",
        }
    )
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "SLUICE_DB"):
        env.pop(name, None)
    upstream_ca = f" --set ssl_verify_upstream_trusted_ca={fake.ca_pem}"

    # Terminal 1: write the config, export the keys, start the proxy.
    start = f"exec {run.replace('8080', port)} --listen-port {port}{upstream_ca}"
    proxy = Background(
        f"set -e\n{first.replace('8080', port)}\n{start}",
        checkout,
        env,
        tmp_path / "terminal-1.log",
    )
    background.append(proxy)
    proxy.wait_for("HTTP(S) proxy listening at 127.0.0.1:")

    # Terminal 2: trust the CA, check with doctor, make the first call.
    done = subprocess.run(
        ["bash", "-c", "set -e\n" + second.replace("8080", port)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{proxy.text()}"
    assert "all checks passed" in done.stdout
    assert '"type":"message"' in done.stdout.replace(" ", "")  # the answer, through the proxy
    [call] = fake.requests
    assert call.header("x-api-key") == "sk-ant-your-real-key"  # swapped for the client key

    # See the row.
    deadline = time.monotonic() + DEADLINE_S
    while "claude-haiku-4-5" not in (shown := _run(usage, checkout, env)):
        assert time.monotonic() < deadline, shown
        time.sleep(0.1)
    assert "Total" in shown

    # mitmweb, after stopping scripts/run.
    proxy.stop()
    web_port = free_port()
    extra = f" --listen-port {port} --set web_port={web_port} --set web_open_browser=false{upstream_ca}"
    web = Background(
        f"set -e\n{first.replace('8080', port)}\nexec {mitmweb.replace('8080', port)}{extra}",
        checkout,
        env,
        tmp_path / "terminal-1-mitmweb.log",
    )
    background.append(web)
    web.wait_for(f"Web server listening at http://127.0.0.1:{web_port}/")
    web.wait_for("HTTP(S) proxy listening at 127.0.0.1:")
    assert "Traceback" not in proxy.text() + web.text()


def _run(command: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout
