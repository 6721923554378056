"""scripts/_venv.sh: switching between scripts/run and scripts/test installs nothing after the first time.

Run against a stand-in `.venv/bin/python` that only logs what it is asked to install (no network, no pip).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAND_IN = """#!/usr/bin/env bash
[ "$1" = "-c" ] && exit 0
echo "$*" >> "$(dirname "$0")/../installs.log"
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    if shutil.which("bash") is None or shutil.which("sha256sum") is None:
        pytest.skip("needs bash and sha256sum")
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "_venv.sh", tmp_path / "scripts")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STAND_IN)
    python.chmod(0o755)
    return tmp_path


def ensure(root: Path, extras: str) -> list[str]:
    """Run ensure_venv with `extras`; return the `pip install -e` lines it ran."""
    log = root / ".venv" / "installs.log"
    log.unlink(missing_ok=True)
    subprocess.run(["bash", "-c", f"source scripts/_venv.sh; ensure_venv '{extras}'"], cwd=root, check=True)
    lines = log.read_text().splitlines() if log.exists() else []
    return [line.split()[-1] for line in lines if " -e " in line]


def test_switching_between_run_and_test_installs_nothing_after_the_first_time(root: Path) -> None:
    assert ensure(root, "") == ["."]
    assert ensure(root, "test") == [".[test]"]
    for _ in range(2):
        assert ensure(root, "") == []
        assert ensure(root, "test") == []


def test_a_new_extra_keeps_the_ones_installed_before(root: Path) -> None:
    ensure(root, "test")
    assert ensure(root, "bench") == [".[bench,test]"]
    assert ensure(root, "test") == [] and ensure(root, "") == []


def test_a_changed_pyproject_reinstalls_once_with_the_same_extras(root: Path) -> None:
    ensure(root, "test")
    with (root / "pyproject.toml").open("a") as file:
        file.write("\n# a new dependency\n")
    assert ensure(root, "") == [".[test]"]
    assert ensure(root, "test") == []


def test_a_stamp_from_the_previous_format_is_understood(root: Path) -> None:
    ensure(root, "")
    stamp = root / ".venv" / ".sluice-installed"
    stamp.write_text(stamp.read_text().split()[0] + "-test\n")
    assert ensure(root, "test") == [] and ensure(root, "") == []
