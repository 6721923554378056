from __future__ import annotations

from pathlib import Path

import pytest

from state import sandbox
from state.cli import main


def test_the_cli_wants_a_command_and_says_what_the_sandbox_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text("")
    assert main(["sandbox", "--config", str(config), "--"]) == 1
    assert "no command given" in capsys.readouterr().err
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    assert main(["sandbox", "--config", str(config), "--db", str(tmp_path / "s.db"), "--", "true"]) == 1
    assert "needs root" in capsys.readouterr().err
