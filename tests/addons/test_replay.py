"""`sluice replay` (addons/replay.py): a new config's rules over flows saved with `-w`, nothing sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from mitmproxy import io

from addons.replay import replay_file
from rules.config import Client, Config, Rules, SystemBlock
from tests.addons.proxy import CLIENT_KEY, llm_flow

POLICY = Rules(system_blocks=[SystemBlock(name="policy", text="Answer in English.")])


def saved(tmp_path: Path, *flows: object) -> Path:
    path = tmp_path / "saved.flows"
    with path.open("wb") as file:
        writer = io.FlowWriter(file)
        for flow in flows:
            writer.add(flow)  # type: ignore[arg-type]
    return path


def test_each_saved_llm_request_is_replayed_under_the_new_rules_and_attributed(tmp_path: Path) -> None:
    call = llm_flow()
    other = llm_flow(host="pypi.org", path="/simple/")
    other.request.method = "GET"
    config = Config(clients=[Client(name="alice", key=CLIENT_KEY)], rules=POLICY)
    report = replay_file(saved(tmp_path, call, other), config, None)
    assert report.flows == 2 and report.warnings == []
    [replayed] = report.requests
    assert (replayed.flow_id, replayed.host, replayed.path) == (call.id, "api.anthropic.com", "/v1/messages")
    assert (replayed.provider, replayed.api, replayed.client) == ("anthropic", "messages", "alice")
    assert replayed.blocks_injected == ["policy"] and replayed.bytes_after > replayed.bytes_before
    assert replayed.prefix == "nothing cached"  # the saved request marked no prompt-cache breakpoint


def test_a_client_key_that_cannot_be_resolved_is_replayed_as_no_ones_and_said_once(tmp_path: Path) -> None:
    config = Config(clients=[Client(name="alice", key="env:SLUICE_TEST_NEVER_SET_KEY")])
    report = replay_file(saved(tmp_path, llm_flow(), llm_flow()), config, None)
    assert [request.client for request in report.requests] == [None, None]
    assert len(report.warnings) == 1 and "SLUICE_TEST_NEVER_SET_KEY" in report.warnings[0]


def test_a_file_that_is_not_saved_flows_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not flows")
    with pytest.raises(ValueError, match=r"notes\.txt is not a mitmproxy flow file"):
        replay_file(path, Config(), None)
    with pytest.raises(ValueError, match="cannot read"):
        replay_file(tmp_path / "missing.flows", Config(), None)
