"""`sluice replay` over flows a real mitmdump saved with `-w` while sluice ran: one config change that would
bust every cached prompt prefix (a new system block) and one that would not (a user id stamped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from state.cli import main
from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import anthropic_client
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e

ALICE_KEY = "sluice-client-alice-replay-5d1e"
ENV = {"SLUICE_REPLAY_ALICE": ALICE_KEY}
RUNNING = """
[[clients]]
name = "alice"
key = "env:SLUICE_REPLAY_ALICE"
"""
NEW_BLOCK = (
    RUNNING
    + """
[[rules.system_blocks]]
name = "policy"
text = "Operator policy: never paste customer data into answers."
"""
)
USER_ID = RUNNING.replace(
    'key = "env:SLUICE_REPLAY_ALICE"', 'key = "env:SLUICE_REPLAY_ALICE"\nuser_id = "alice-42"'
)
CACHED_SYSTEM = [{"type": "text", "text": "You review code. " * 80, "cache_control": {"type": "ephemeral"}}]
TURNS = [
    {"role": "user", "content": "Review this diff."},
    {"role": "assistant", "content": "Which file?"},
    {
        "role": "user",
        "content": [{"type": "text", "text": "main.py", "cache_control": {"type": "ephemeral"}}],
    },
]


@pytest.fixture
def flows(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    saved = tmp_path / "saved.flows"
    proxy = start_proxy(config_toml=RUNNING, env=ENV, extra_args=["-w", str(saved)])
    with anthropic_client(proxy, ALICE_KEY) as client:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=64, system=CACHED_SYSTEM, messages=TURNS)
        client.messages.create(
            model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    proxy.wait_for_rows(2)
    assert proxy.stop() == 0  # the flow file is complete once mitmdump has shut down
    monkeypatch.setenv("SLUICE_REPLAY_ALICE", ALICE_KEY)
    return saved


def replay(
    flows: Path, tmp_path: Path, config: str, capsys: pytest.CaptureFixture[str]
) -> list[dict[str, Any]]:
    path = tmp_path / "new.toml"
    path.write_text(config)
    assert main(["replay", str(flows), "--config", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_new_system_block_busts_the_cached_prefix(
    flows: Path, fake: FakeProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = len(fake.requests)
    cached, plain = replay(flows, tmp_path, NEW_BLOCK, capsys)
    assert cached["client"] == "alice" and cached["path"] == "/v1/messages"
    assert cached["blocks_injected"] == ["policy"]
    assert cached["bytes_added"] > len("Operator policy: never paste customer data into answers.")
    assert (cached["breakpoints_before"], cached["breakpoints_after"]) == (2, 2)
    assert cached["prefix"] == "changed"
    assert cached["prefix_note"].startswith("prefix changes at system[1]: ")
    assert plain["blocks_injected"] == ["policy"] and plain["prefix"] == "nothing cached"
    assert len(fake.requests) == sent  # nothing was sent


def test_stamping_a_user_id_keeps_the_cached_prefix(
    flows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cached, _ = replay(flows, tmp_path, USER_ID, capsys)
    assert cached["applied"] == ["user_id"] and cached["blocks_injected"] == []
    assert cached["bytes_added"] > 0
    assert cached["prefix"] == "unchanged" and cached["prefix_note"] is None


def test_the_table_says_how_many_requests_would_write_their_prefix_anew(
    flows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "new.toml"
    path.write_text(NEW_BLOCK)
    assert main(["replay", str(flows), "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "prefix changes at system[1]" in out and "policy" in out
    assert out.rstrip().endswith("1 of 2 requests would write their cached prompt prefix anew.")


def test_a_file_that_is_not_flows_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes, config = tmp_path / "notes.txt", tmp_path / "new.toml"
    notes.write_text("not flows")
    config.write_text(RUNNING)
    assert main(["replay", str(notes), "--config", str(config)]) == 1
    assert "is not a mitmproxy flow file" in capsys.readouterr().err
