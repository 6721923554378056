"""The real Claude Code CLI end to end: `claude -p` through a real mitmdump with sluice, the fake behind it.

Claude Code holds only a sluice client key (ANTHROPIC_API_KEY=sk-sluice-…); sluice swaps in the real key,
appends the operator's system block and records the call. The CLI is the pinned npm package that
`scripts/install-claude-code` puts in `.e2e-cache/claude-code/` (or `SLUICE_CLAUDE_BIN`); without it the
module is skipped. Claude Code runs with an empty HOME, a minimal environment (none of the developer's
ANTHROPIC_* / CLAUDE_* settings) and its non-essential traffic off, so the only host it talks to is
api.anthropic.com, which the harness sends to the fake.

A conversation of two turns (`--session-id`, then `--resume`) runs once per module and the tests look at what
it left behind. The second turn goes through a second, plain mitmdump in front of sluice that saves what
Claude Code itself sent (`-w`): that is what "unchanged" is measured against.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import REPO_ROOT, Proxy
from tests.e2e.test_recording import assert_tokens, expected_cost
from tests.fake_provider import FakeProvider, RecordedRequest, Usage

CLAUDE_BIN = Path(
    os.environ.get("SLUICE_CLAUDE_BIN")
    or REPO_ROOT / ".e2e-cache" / "claude-code" / "node_modules" / ".bin" / "claude"
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.access(CLAUDE_BIN, os.X_OK),
        reason=f"Claude Code CLI not installed at {CLAUDE_BIN}: run scripts/install-claude-code",
    ),
]

CLAUDE_TIMEOUT = 45.0

# What Claude Code holds, and what only sluice and the provider may see.
CLIENT_KEY = "sk-sluice-alice-claude-code-3f9a1c7e5b"
REAL_KEY = "sk-ant-api03-REAL-CLAUDE-CODE-KEY-8e2d4b6a0c1f3e5d"
# What sluice would stamp as metadata.user_id if Claude Code sent none: it always sends its own.
STAMPED_USER_ID = "alice-stamped-by-sluice"
POLICY = "House policy from the sluice operator: answer in one short sentence."
POLICY_BLOCK = {"type": "text", "text": POLICY}
REPLY = "Hi! This answer came from the fake provider, through sluice."
USAGE = Usage(input_tokens=1234, cache_read_tokens=20480, cache_write_5m_tokens=512, output_tokens=56)
BILLING_PREFIX = "x-anthropic-billing-header:"

PROXY_ENV = {"SLUICE_E2E_CC_CLIENT": CLIENT_KEY, "SLUICE_E2E_CC_UPSTREAM": REAL_KEY}
CONFIG = f"""
[[clients]]
name = "alice"
key = "env:SLUICE_E2E_CC_CLIENT"
user_id = "{STAMPED_USER_ID}"

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:SLUICE_E2E_CC_UPSTREAM"]

[[rules.system_blocks]]
name = "house-policy"
text = "{POLICY}"
"""

# Headers that end at each hop (RFC 9110 §7.6.1): no proxy forwards them.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "upgrade", "proxy-authorization"}
# The header families Claude Code needs carried verbatim.
PASSED_FAMILIES = ("anthropic-", "x-claude-code-", "x-stainless-")


@dataclass
class ClaudeRun:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        parsed = json.loads(self.stdout)
        assert isinstance(parsed, dict), self.stdout
        return parsed


def claude_env(home: Path, **extra: str) -> dict[str, str]:
    """A minimal environment: nothing of the developer's Claude Code or Anthropic settings leaks in."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "TERM": "dumb",
        "NO_COLOR": "1",
        "ANTHROPIC_API_KEY": CLIENT_KEY,
        # Only the API calls a turn needs: no telemetry, error reports, update checks, feature flags.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        **extra,
    }


def run_claude(workdir: Path, env: dict[str, str], prompt: str, *args: str) -> ClaudeRun:
    command = [str(CLAUDE_BIN), "-p", prompt, "--output-format", "json", *args]
    try:
        done = subprocess.run(
            command,
            cwd=workdir,
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=CLAUDE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"claude did not finish in {CLAUDE_TIMEOUT}s: {e.stderr!r}") from None
    run = ClaudeRun(
        command, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode("utf-8", "replace")
    )
    assert run.returncode == 0, f"claude exited {run.returncode}\nstdout: {run.stdout}\nstderr: {run.stderr}"
    return run


def through(proxy: Proxy, home: Path, **extra: str) -> dict[str, str]:
    """Claude Code's environment for a forward proxy: HTTPS_PROXY and the proxy's CA."""
    return claude_env(home, HTTPS_PROXY=proxy.url, NODE_EXTRA_CA_CERTS=str(proxy.ca_pem), **extra)


def read_flows(path: Path) -> list[http.HTTPFlow]:
    """The HTTP flows a `-w` file holds."""
    with warnings.catch_warnings():
        # mitmproxy.io imports its flow-filter grammar, written against pyparsing's deprecated names.
        warnings.simplefilter("ignore", DeprecationWarning)
        from mitmproxy import io as mitm_io

    with path.open("rb") as file:
        return [flow for flow in mitm_io.FlowReader(file).stream() if isinstance(flow, http.HTTPFlow)]


def messages_requests(requests: list[RecordedRequest]) -> list[RecordedRequest]:
    return [r for r in requests if r.method == "POST" and r.path == "/v1/messages"]


def compact(value: Any) -> bytes:
    """JSON as Claude Code (JSON.stringify) and sluice write it: compact, non-ASCII as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class Conversation:
    session_id: str
    runs: list[ClaudeRun]
    sluice: Proxy
    capture: Proxy
    requests: list[RecordedRequest]  # everything the fake received, in order
    turns: list[RecordedRequest]  # the two /v1/messages calls, as the fake received them
    sent: http.Request  # turn 2 as Claude Code sent it (saved by the capture proxy)
    rows: list[dict[str, Any]]
    home: Path
    files: list[Path]  # every file a person could read afterwards: logs, saved flows, the database


@pytest.fixture(scope="module")
def conversation(
    fake_server: FakeProvider, module_start_proxy: ProxyFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Conversation]:
    fake = fake_server
    fake.reset()
    fake.set_default(text=REPLY, usage=USAGE)
    base = tmp_path_factory.mktemp("claude-code")
    home, workdir = base / "home", base / "project"
    home.mkdir()
    workdir.mkdir()
    sluice_flows, capture_flows = base / "sluice.flows", base / "capture.flows"
    # flow_detail=2 puts every request's headers in the log, so "not in the log" means something.
    sluice = module_start_proxy(
        config_toml=CONFIG, env=PROXY_ENV, extra_args=["--set", "flow_detail=2", "-w", str(sluice_flows)]
    )
    capture = module_start_proxy(
        addon=False,
        mode=f"upstream:{sluice.url}",
        upstream_ca=sluice.ca_pem,
        extra_args=["-w", str(capture_flows)],
    )
    session_id = str(uuid.uuid4())
    first = run_claude(workdir, through(sluice, home), "say hi", "--session-id", session_id)
    second = run_claude(workdir, through(capture, home), "and once more", "--resume", session_id)
    rows = sluice.wait_for_rows(2)
    assert capture.stop() == 0
    assert sluice.stop() == 0
    requests = fake.requests
    errors = fake.errors
    fake.reset()
    assert not errors, "the fake provider crashed:\n" + "\n".join(errors)

    turns = messages_requests(requests)
    assert len(turns) == 2, [f"{r.method} {r.target}" for r in requests]
    sent = [f.request for f in read_flows(capture_flows) if f.request.path.startswith("/v1/messages")]
    assert len(sent) == 1, [f.request.path for f in read_flows(capture_flows)]
    files = [
        sluice.log_path,
        capture.log_path,
        sluice_flows,
        capture_flows,
        *sluice.workdir.glob("sluice*.db*"),
    ]
    yield Conversation(
        session_id, [first, second], sluice, capture, requests, turns, sent[0], rows, home, files
    )


def system_of(request: RecordedRequest) -> list[dict[str, Any]]:
    system = request.json()["system"]
    assert isinstance(system, list), system
    return system


# The turn itself.


def test_claude_code_finishes_both_turns_with_the_fakes_reply(conversation: Conversation) -> None:
    for run in conversation.runs:
        result = run.result
        assert result["is_error"] is False, run.stdout
        assert result["result"] == REPLY
        assert result["session_id"] == conversation.session_id
        assert result["usage"]["input_tokens"] == USAGE.input_tokens
        assert result["usage"]["output_tokens"] == USAGE.output_tokens


def test_claude_code_talks_only_to_the_anthropic_api(conversation: Conversation) -> None:
    assert {r.sni for r in conversation.requests} == {"api.anthropic.com"}
    assert {r.header("host") for r in conversation.requests} == {"api.anthropic.com"}
    # Nothing was refused for want of a client key, and no other host was dialled.
    log = conversation.sluice.log_text()
    assert "no known client key" not in log
    dialled = {
        line.split("server connect ")[1].split()[0] for line in log.splitlines() if "server connect " in line
    }
    assert dialled == {"api.anthropic.com:443"}


# Credentials.


def test_the_upstream_gets_the_real_key_and_never_the_client_key(conversation: Conversation) -> None:
    for request in conversation.requests:
        assert request.header("x-api-key") == REAL_KEY, f"{request.method} {request.target}"
        assert request.header("authorization") is None
        raw = json.dumps(request.headers) + request.body.decode("utf-8", "replace")
        assert CLIENT_KEY not in raw
    # Claude Code did send the client key: the capture proxy saw it, on the client's side of sluice.
    assert conversation.sent.headers.get("x-api-key") == CLIENT_KEY


def test_the_real_key_is_nowhere_a_person_can_read(conversation: Conversation) -> None:
    for run in conversation.runs:
        assert REAL_KEY not in run.stdout + run.stderr
    for path in conversation.files:
        assert REAL_KEY.encode() not in path.read_bytes(), path.name
    # Claude Code's own files (settings, session transcripts) hold nothing of it either.
    for path in (p for p in conversation.home.rglob("*") if p.is_file()):
        assert REAL_KEY.encode() not in path.read_bytes(), path
    # The placeholder is what the log shows where the key was.
    assert CLIENT_KEY in conversation.sluice.log_text()


# Recording.


def test_each_turn_has_a_row_with_client_model_exact_tokens_cost_and_session(
    conversation: Conversation,
) -> None:
    assert len(conversation.rows) == 2
    for row, request in zip(conversation.rows, conversation.turns, strict=True):
        model = request.json()["model"]
        assert (row["client"], row["provider"], row["api"], row["host"]) == (
            "alice",
            "anthropic",
            "messages",
            "api.anthropic.com",
        )
        assert (row["method"], row["path"], row["status"], row["stream"], row["error"]) == (
            "POST",
            "/v1/messages",
            200,
            1,
            None,
        )
        assert row["model"] == model
        assert request.response is not None
        assert row["request_id"] == request.response.header("request-id")
        assert_tokens(row, USAGE)
        cost = expected_cost("anthropic", model, USAGE)
        assert row["cost_usd"] == pytest.approx(cost, rel=1e-9), row["cost_note"]
        assert row["session_id"] == conversation.session_id == request.header("x-claude-code-session-id")
        assert row["credential"] and REAL_KEY not in row["credential"]
        assert "system_block:house-policy" in json.loads(row["rules_applied"])


# The body.


def test_the_billing_block_stays_first_and_the_policy_block_comes_after_it(
    conversation: Conversation,
) -> None:
    for request in conversation.turns:
        system = system_of(request)
        assert system[0]["type"] == "text"
        assert system[0]["text"].startswith(BILLING_PREFIX), system[0]
        assert system[-1] == POLICY_BLOCK
        assert [block for block in system if block.get("text") == POLICY] == [POLICY_BLOCK]
    # Turn 2 against what Claude Code sent: system[0] byte for byte, and exactly one block added, last.
    sent_system = json.loads(conversation.sent.content or b"")["system"]
    arrived = system_of(conversation.turns[1])
    assert compact(arrived[0]) == compact(sent_system[0])
    assert compact(arrived) == compact([*sent_system, POLICY_BLOCK])


def test_the_policy_block_is_byte_identical_on_every_turn(conversation: Conversation) -> None:
    first, second = (request.body for request in conversation.turns)
    block = compact(POLICY_BLOCK)
    assert first.count(block) == 1 and second.count(block) == 1
    # Everything after Claude Code's per-turn attribution block is the same prefix on both turns, so the
    # prompt cache (and any thinking bound to it) survives the injection.
    assert compact(system_of(conversation.turns[0])[1:]) == compact(system_of(conversation.turns[1])[1:])


def test_the_body_arrives_byte_for_byte_but_for_the_appended_block(conversation: Conversation) -> None:
    sent = conversation.sent.raw_content or b""
    arrived = conversation.turns[1].body
    sent_system = compact(json.loads(sent)["system"])
    assert sent.count(sent_system) == 1, "Claude Code's body is not compact JSON: compare by value instead"
    expected = sent.replace(sent_system, sent_system[:-1] + b"," + compact(POLICY_BLOCK) + b"]")
    assert arrived == expected


def test_claude_codes_metadata_user_id_is_kept(conversation: Conversation) -> None:
    sent_user_id = json.loads(conversation.sent.content or b"")["metadata"]["user_id"]
    for request in conversation.turns:
        user_id = request.json()["metadata"]["user_id"]
        assert user_id != STAMPED_USER_ID
        # Claude Code's own shape: a JSON string carrying its session.
        assert json.loads(user_id)["session_id"] == conversation.session_id
    assert conversation.turns[1].json()["metadata"]["user_id"] == sent_user_id


# Headers.


def test_anthropic_beta_and_claude_code_headers_arrive_verbatim(conversation: Conversation) -> None:
    sent = conversation.sent.headers
    arrived = conversation.turns[1]
    assert sent.get("anthropic-beta"), "Claude Code sent no anthropic-beta"
    assert arrived.header_values("anthropic-beta") == sent.get_all("anthropic-beta")
    names = {name.decode().lower() for name, _ in sent.fields}
    checked = {name for name in names if name.startswith(PASSED_FAMILIES) or name in {"x-app", "user-agent"}}
    assert {"anthropic-version", "x-claude-code-session-id", "x-stainless-lang"} <= checked
    for name in checked:
        assert arrived.header_values(name) == sent.get_all(name), name
    assert arrived.header("x-claude-code-session-id") == conversation.session_id


def test_every_end_to_end_header_claude_code_sends_arrives(conversation: Conversation) -> None:
    sent = {name.decode().lower() for name, _ in conversation.sent.headers.fields} - HOP_BY_HOP
    arrived = {name.lower() for name, _ in conversation.turns[1].headers}
    assert sent - arrived == set()


# Reverse mode.


def test_reverse_mode_with_anthropic_base_url(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    fake.set_default(text=REPLY, usage=USAGE)
    proxy = start_proxy(config_toml=CONFIG, env=PROXY_ENV, mode="reverse:https://api.anthropic.com")
    home, workdir = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    workdir.mkdir()
    session_id = str(uuid.uuid4())
    run = run_claude(
        workdir, claude_env(home, ANTHROPIC_BASE_URL=proxy.url), "say hi", "--session-id", session_id
    )
    [row] = proxy.wait_for_rows(1)
    assert proxy.stop() == 0

    assert run.result["result"] == REPLY
    [turn] = messages_requests(fake.requests)
    assert all(r.header("x-api-key") == REAL_KEY for r in fake.requests)
    assert turn.header("host") == "api.anthropic.com" and turn.sni == "api.anthropic.com"
    system = system_of(turn)
    assert system[0]["text"].startswith(BILLING_PREFIX) and system[-1] == POLICY_BLOCK
    assert (row["client"], row["session_id"], row["status"]) == ("alice", session_id, 200)
    assert_tokens(row, USAGE)
    for text in (run.stdout, run.stderr, proxy.log_text()):
        assert REAL_KEY not in text
