"""The real Claude Code CLI inside `sluice sandbox`, with no proxy variable and no CA set by hand: it looks up
api.anthropic.com in the sandbox's DNS, connects to whatever address it is given, and its call still reaches
the fake provider (under the real host name, by sluice's own resolution), with the real key swapped in,
recorded with its usage and attributed to its client. The sandbox gives it its client key and the CA.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, SITECUSTOMIZE_DIR, rows
from tests.e2e.sandboxing import SKIP_REASON, leftovers, run_sandbox
from tests.e2e.test_claude_code import (
    CLAUDE_BIN,
    CONFIG,
    PROXY_ENV,
    REAL_KEY,
    REPLY,
    USAGE,
    claude_env,
    messages_requests,
)
from tests.fake_provider import FakeProvider

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
    pytest.mark.skipif(
        not os.access(CLAUDE_BIN, os.X_OK),
        reason=f"Claude Code CLI not installed at {CLAUDE_BIN}: run scripts/install-claude-code",
    ),
]


def test_claude_code_in_a_sandbox_is_metered_without_any_proxy_setting(
    tmp_path: Path, fake: FakeProvider
) -> None:
    fake.set_default(text=REPLY, usage=USAGE)
    home = tmp_path / "home"
    home.mkdir()
    env = claude_env(
        home,
        **PROXY_ENV,
        PYTHONPATH=os.pathsep.join((str(REPO_ROOT), str(SITECUSTOMIZE_DIR))),
        SLUICE_TEST_HOSTS=fake.hosts_env(),
    )
    del env["ANTHROPIC_API_KEY"]  # the sandbox gives Claude Code its client key
    session = str(uuid.uuid4())
    claude = f'{CLAUDE_BIN} -p "say hi" --output-format json --session-id {session}'
    script = f'echo "$SLUICE_SANDBOX" > ns.txt; exec {claude}'
    done = run_sandbox(tmp_path, fake, CONFIG, ["sh", "-c", script], env)
    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    result = json.loads(done.stdout)
    assert (result["is_error"], result["result"], result["session_id"]) == (False, REPLY, session)

    [turn] = messages_requests(fake.requests)
    assert turn.header("x-api-key") == REAL_KEY and turn.sni == "api.anthropic.com"
    assert {r.sni for r in fake.requests} == {"api.anthropic.com"}
    calls = [row for row in rows(tmp_path / "sluice.db") if row["path"] == "/v1/messages"]
    assert len(calls) == 1
    [row] = calls
    assert (row["client"], row["host"], row["session_id"]) == ("alice", "api.anthropic.com", session)
    assert (row["input_tokens"], row["output_tokens"]) == (USAGE.input_tokens, USAGE.output_tokens)
    assert row["cache_read_tokens"] == USAGE.cache_read_tokens
    # Claude Code held only its client key: nothing it could have written down holds the real one.
    for path in home.rglob("*"):
        if path.is_file():
            assert REAL_KEY.encode() not in path.read_bytes(), path
    namespace = (tmp_path / "ns.txt").read_text().strip()
    assert leftovers(namespace, [str(tmp_path / "mitm")]) == []
