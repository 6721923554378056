"""`sluice sandbox -- COMMAND` end to end: curl inside a real network namespace, with no proxy variables,
reaches the fake provider under its real host name through the sandbox's own sluice; the egress policy
refuses and records everything else, passes allowed hosts through untouched, and the sandbox leaves nothing
behind however it ends. (The real Claude Code CLI in a sandbox: test_claude_code_sandbox.py.)
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import make_test_ca, rows
from tests.e2e.sandboxing import (
    SANDBOX_TIMEOUT,
    SKIP_REASON,
    leftovers,
    processes_with,
    read_file,
    run_sandbox,
    sandbox_env,
    start_sandbox,
    started,
    stop,
    wait_for,
)
from tests.fake_provider import FakeProvider, Usage
from tests.hostile.traps import Trap

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")]

CLIENT_KEY = "sk-sluice-sandboxed-agent-6c1e9a"
REAL_KEY = "sk-ant-api03-REAL-SANDBOX-KEY-2b4d6f8a0c1e"
ALLOWED = "allowed.sluice.test"
BLOCKED = "blocked.sluice.test"
CONFIG = f"""
[[clients]]
name = "agent"
key = "env:SLUICE_SANDBOX_CLIENT"

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:SLUICE_SANDBOX_UPSTREAM"]

[sandbox]
allow = ["{ALLOWED}:443"]
"""
KEYS = {"SLUICE_SANDBOX_CLIENT": CLIENT_KEY, "SLUICE_SANDBOX_UPSTREAM": REAL_KEY}
MESSAGE = json.dumps(
    {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
)
CLI = "import sys; from state.cli import main; sys.exit(main())"
# The sandbox's DNS server is the host side of its link; curl's --resolve pins a name to it by hand.
NAMESERVER = "$(awk '/^nameserver/ {print $2; exit}' /etc/resolv.conf)"


def events(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute("select * from sandbox_events order by at")]
    finally:
        conn.close()


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_curl_inside_is_metered_and_credential_swapped_with_no_proxy_variables(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.next(text="hello from the fake", usage=Usage(input_tokens=21, output_tokens=4))
    script = (
        'env > env.txt; curl -sS --max-time 20 -o reply.json -w "%{http_code}" '
        '-H "x-api-key: $ANTHROPIC_API_KEY" -H "anthropic-version: 2023-06-01" '
        f"-H 'content-type: application/json' -d '{MESSAGE}' https://api.anthropic.com/v1/messages"
    )
    done = run_sandbox(tmp_path, fake, CONFIG, sh(script), sandbox_env(fake, **KEYS))
    assert (done.returncode, done.stdout) == (0, "200"), done.stderr
    assert "hello from the fake" in (tmp_path / "reply.json").read_text()
    [request] = fake.requests
    assert request.header("x-api-key") == REAL_KEY and request.sni == "api.anthropic.com"
    [row] = rows(tmp_path / "sluice.db")
    assert (row["client"], row["host"], row["status"]) == ("agent", "api.anthropic.com", 200)
    assert (row["input_tokens"], row["output_tokens"]) == (21, 4)
    env = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines() if "=" in line)
    assert env["ANTHROPIC_API_KEY"] == CLIENT_KEY
    assert REAL_KEY not in (tmp_path / "env.txt").read_text()
    assert "SLUICE_SANDBOX_UPSTREAM" not in env
    assert not {"HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"} & env.keys()
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        assert env[name]


def test_a_host_off_the_allow_list_fails_inside_and_is_recorded(tmp_path: Path, fake: FakeProvider) -> None:
    # By name (the sandbox's DNS does not know it), then by an address (the connection is not made).
    script = (
        f"curl -sS --max-time 10 https://{BLOCKED}/ ; echo by-name=$? > tried.txt; "
        f"curl -sS --max-time 10 --resolve {BLOCKED}:443:{NAMESERVER} https://{BLOCKED}/ ; "
        "echo by-address=$? >> tried.txt; exit 9"
    )
    done = run_sandbox(tmp_path, fake, CONFIG, sh(script), sandbox_env(fake, **KEYS))
    assert done.returncode == 9, done.stderr
    assert (tmp_path / "tried.txt").read_text().split() == ["by-name=6", "by-address=35"]
    recorded = [(e["kind"], e["host"], e["port"]) for e in events(tmp_path / "sluice.db")]
    assert ("dns", BLOCKED, None) in recorded and ("connection", BLOCKED, 443) in recorded
    assert f"refused connection {BLOCKED}:443" in done.stderr  # and the operator is told
    assert fake.requests == []


def test_an_allowed_host_is_reached_by_name_without_interception(tmp_path: Path, fake: FakeProvider) -> None:
    own = make_test_ca(tmp_path / "own-ca", names=(ALLOWED,))
    with Trap(certfile=own.leaf_cert, keyfile=own.leaf_key) as server:
        # curl trusts only the server's own CA here: a certificate minted by sluice would fail the handshake.
        script = (
            f"curl -sS --max-time 10 --cacert {own.ca_cert} -o /dev/null -w '%{{http_code}}' "
            f"https://{ALLOWED}/allowed-marker"
        )
        env = sandbox_env(fake, f"{ALLOWED}:443=127.0.0.1:{server.port}", **KEYS)
        done = run_sandbox(tmp_path, fake, CONFIG, sh(script), env)
        assert (done.returncode, done.stdout) == (0, "200"), done.stderr
        assert server.holds("GET /allowed-marker")
    assert events(tmp_path / "sluice.db") == []
    assert rows(tmp_path / "sluice.db") == []  # passed through: not a call sluice saw


def test_a_command_run_as_another_user_cannot_read_the_real_key_or_leave(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.next(usage=Usage(input_tokens=5, output_tokens=1))
    out = Path(tempfile.mkdtemp(prefix="sluice-sandbox-test-"))
    out.chmod(0o777)  # the command's user writes its findings here
    try:
        script = (
            f"cd {out}; id -u > uid.txt; "
            # Every process's environment it can read, sluice's own included if it could.
            "for f in /proc/[0-9]*/environ; do cat $f; done 2>/dev/null | tr '\\0' '\\n' "
            f"| grep -c '{REAL_KEY}' > found.txt; "
            "nsenter -t 1 -n true 2>/dev/null; echo $? > nsenter.txt; "
            "curl -sS --max-time 20 -o /dev/null -w '%{http_code}' -H \"x-api-key: $ANTHROPIC_API_KEY\" "
            "-H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' "
            f"-d '{MESSAGE}' https://api.anthropic.com/v1/messages > code.txt"
        )
        done = run_sandbox(
            tmp_path, fake, CONFIG, sh(script), sandbox_env(fake, **KEYS), ["--user", "nobody"]
        )
        assert done.returncode == 0, done.stderr
        assert "warning" not in done.stderr
        found = {
            name: (out / f"{name}.txt").read_text().strip() for name in ("uid", "found", "nsenter", "code")
        }
        assert found == {"uid": "65534", "found": "0", "nsenter": "1", "code": "200"}
    finally:
        shutil.rmtree(out)
    [row] = rows(tmp_path / "sluice.db")
    assert (row["client"], row["input_tokens"]) == ("agent", 5)


def test_a_command_run_as_root_is_warned_that_it_could_read_sluices_memory(
    tmp_path: Path, fake: FakeProvider
) -> None:
    script = f"cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c '{REAL_KEY}'; true"
    done = run_sandbox(tmp_path, fake, CONFIG, sh(script), sandbox_env(fake, **KEYS))
    assert int(done.stdout) >= 1  # why the sandbox says so, and why --user exists
    assert "COMMAND runs as root" in done.stderr and "pass --user" in done.stderr


@pytest.mark.parametrize(("script", "status"), [("true", 0), ("exit 7", 7), ("kill -TERM $$", 143)])
def test_the_exit_status_comes_back_and_nothing_is_left_behind(
    tmp_path: Path, fake: FakeProvider, script: str, status: int
) -> None:
    marker = f"sleep {3000 + secrets.randbelow(1000)}"
    # A process left running in the background must not outlive the sandbox either.
    full = f'echo "$SLUICE_SANDBOX" > ns.txt; {marker} & {script}'
    done = run_sandbox(tmp_path, fake, CONFIG, sh(full), sandbox_env(fake, **KEYS))
    assert done.returncode == status, done.stderr
    namespace = (tmp_path / "ns.txt").read_text().strip()
    assert namespace.startswith("sluice-")
    assert leftovers(namespace, [marker, str(tmp_path / "mitm")]) == []


def test_killing_the_sandbox_ends_the_command_and_leaves_nothing_behind(
    tmp_path: Path, fake: FakeProvider
) -> None:
    marker = f"sleep {4000 + secrets.randbelow(1000)}"
    script = f'echo "$SLUICE_SANDBOX" > ns.txt; {marker} & {marker}.5'
    process = start_sandbox(tmp_path, fake, CONFIG, sh(script), sandbox_env(fake, **KEYS))
    namespace = started(process, tmp_path)
    try:
        # What the check below must find gone: it sees each kind while the sandbox runs.
        running = " ".join(leftovers(namespace, [marker, str(tmp_path / "mitm")]))
        for kind in ("namespace", "link", "nftables table", "/etc/netns", f"({marker})", "mitm)"):
            assert kind in running
    finally:
        status, _, stderr = stop(process, namespace, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, stderr
    assert leftovers(namespace, [marker, str(tmp_path / "mitm")]) == []


def test_a_command_that_ignores_the_first_signal_is_killed_by_the_second(
    tmp_path: Path, fake: FakeProvider
) -> None:
    marker = f"sleep {5000 + secrets.randbelow(1000)}"
    # The command notes each SIGTERM it gets and carries on (`wait` returns to the loop when one arrives).
    script = (
        "trap 'echo got >> got.txt' TERM; echo \"$SLUICE_SANDBOX\" > ns.txt; "
        f"while true; do {marker} & wait; done"
    )
    process = start_sandbox(tmp_path, fake, CONFIG, sh(script), sandbox_env(fake, **KEYS))
    namespace = started(process, tmp_path)
    try:
        process.send_signal(signal.SIGTERM)
        # Two signals sent at once may reach this process as one: the second goes once the first arrived.
        wait_for(lambda: read_file(tmp_path / "got.txt"), "the first SIGTERM never reached the command")
    finally:
        status, _, stderr = stop(process, namespace, signal.SIGTERM)
    assert status == 128 + signal.SIGKILL, stderr
    assert (tmp_path / "got.txt").read_text() == "got\n"
    assert leftovers(namespace, [marker, str(tmp_path / "mitm")]) == []


def test_what_a_sandbox_killed_with_sigkill_left_is_cleaned_up_on_demand(
    tmp_path: Path, fake: FakeProvider
) -> None:
    marker = f"sleep {6000 + secrets.randbelow(1000)}"
    script = f'echo "$SLUICE_SANDBOX" > ns.txt; {marker}'
    process = start_sandbox(tmp_path, fake, CONFIG, sh(script), sandbox_env(fake, **KEYS))
    namespace = started(process, tmp_path)
    process.kill()  # no chance to tear anything down
    process.wait(timeout=SANDBOX_TIMEOUT)  # its output pipes stay open: the command inside still holds them
    for pipe in (process.stdout, process.stderr):
        assert pipe is not None
        pipe.close()
    # Its mitmdump goes with it (it asked the kernel for a signal when its parent dies).
    wait_for(lambda: True if not processes_with(str(tmp_path / "mitm")) else None, "mitmdump outlived it")
    left = " ".join(leftovers(namespace, [marker]))
    for kind in ("namespace", "link", "nftables table", "/etc/netns", f"({marker})"):
        assert kind in left
    clean = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from state.cli import main; sys.exit(main())",
            "sandbox",
            "--clean",
        ],
        env=sandbox_env(fake),
        capture_output=True,
        text=True,
        timeout=SANDBOX_TIMEOUT,
        check=False,
    )
    assert clean.returncode == 0, clean.stderr
    assert f"cleaned up after {namespace}" in clean.stdout
    assert leftovers(namespace, [marker]) == []
