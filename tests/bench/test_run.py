"""`python -m bench.run`'s options: `--peers` measures LiteLLM beside bare mitmdump, so it is refused with the
options that put something else in bare's place."""

from __future__ import annotations

import pytest

from bench.run import main


@pytest.mark.parametrize("other", [["--against", "."], ["--ops"], ["--ops", "metrics"]])
def test_peers_is_refused_with_what_replaces_bare(
    other: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--peers", *other])
    assert exited.value.code == 2
    assert "--peers compares with bare mitmdump" in capsys.readouterr().err
