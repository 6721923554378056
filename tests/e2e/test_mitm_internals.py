"""A real mitmdump on a mitmproxy sluice was not verified against: one that lacks an internal sluice relies
on refuses to start, naming it; another version starts and says, in its log, which tests to run.

The mitmproxy is changed as the process starts, by a `sitecustomize` module on its PYTHONPATH (in place of
the harness's, which only resolves the fake provider's names: these proxies carry no call).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import start_up_failure

pytestmark = pytest.mark.e2e


def changed_mitmproxy(directory: Path, code: str) -> dict[str, str]:
    """The environment that starts mitmdump with `code` run first, in the process."""
    directory.mkdir(parents=True)
    (directory / "sitecustomize.py").write_text(code)
    return {"PYTHONPATH": str(directory)}


def test_a_mitmproxy_without_an_internal_sluice_relies_on_does_not_start(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    env = changed_mitmproxy(
        tmp_path / "site", "import mitmproxy.net.http.url\ndel mitmproxy.net.http.url.parse_authority\n"
    )
    log = start_up_failure(start_proxy, tmp_path / "proxy", env=env)
    assert "sluice: cannot start:" in log
    assert "lacks what sluice relies on:" in log
    assert "mitmproxy.net.http.url.parse_authority" in log
    assert "Traceback" not in log  # one block a person can act on


def test_an_unverified_mitmproxy_starts_and_says_which_tests_to_run(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    env = changed_mitmproxy(
        tmp_path / "site", "import mitmproxy.version\nmitmproxy.version.VERSION = '12.99.0'\n"
    )
    proxy = start_proxy(tmp_path / "proxy", env=env)
    log = proxy.wait_for_log("is not a version sluice was verified against")
    [line] = [line for line in log.splitlines() if "is not a version sluice was verified against" in line]
    assert "mitmproxy 12.99.0" in line
    assert "pytest tests/addons/test_mitm_internals.py" in line
    assert proxy.returncode is None
