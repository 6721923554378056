"""`sluice doctor --online` against the fake provider, reached under the real host names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, SITECUSTOMIZE_DIR, clean_env
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e

GOOD = "sk-ant-api03-doctor-good-key"
REFUSED = "sk-ant-api03-doctor-revoked-key"
OPENAI_GOOD = "sk-proj-doctor-good-key"


def test_online_asks_each_key_directly_and_names_the_refused_one(fake: FakeProvider, tmp_path: Path) -> None:
    fake.accepted_credentials = {GOOD, OPENAI_GOOD}
    config = tmp_path / "sluice.toml"
    config.write_text(
        """
[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:DOCTOR_KEY_1", "env:DOCTOR_KEY_2"]

[[upstreams]]
host = "api.openai.com"
provider = "openai"
keys = ["env:DOCTOR_OPENAI"]
"""
    )
    env = clean_env(
        {
            "PYTHONPATH": f"{SITECUSTOMIZE_DIR}:{REPO_ROOT}",
            "SLUICE_TEST_HOSTS": fake.hosts_env(),
            "SSL_CERT_FILE": str(fake.ca_pem),
            "DOCTOR_KEY_1": GOOD,
            "DOCTOR_KEY_2": REFUSED,
            "DOCTOR_OPENAI": OPENAI_GOOD,
            # A proxy in the environment is not used for the check: the key goes straight to the provider.
            "HTTPS_PROXY": "http://127.0.0.1:9",
        }
    )
    command = "from state.cli import main; raise SystemExit(main())"
    args = ["doctor", "--online", "--json", "--config", str(config), "--db", str(tmp_path / "s.db")]
    result = subprocess.run(
        [sys.executable, "-c", command, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    checks = {check["name"]: check for check in json.loads(result.stdout)["checks"]}
    assert checks["api.anthropic.com upstreams[0].keys[0]"]["status"] == "pass"
    refused = checks["api.anthropic.com upstreams[0].keys[1]"]
    assert refused["status"] == "fail"
    assert refused["detail"] == "env:DOCTOR_KEY_2 was refused (401): the provider does not accept this key"
    assert checks["api.openai.com upstreams[1].keys[0]"]["status"] == "pass"
    asked = [(request.method, request.path, request.header("host")) for request in fake.requests]
    assert sorted(asked) == [
        ("GET", "/v1/models", "api.anthropic.com"),
        ("GET", "/v1/models", "api.anthropic.com"),
        ("GET", "/v1/models", "api.openai.com"),
    ]
    assert GOOD not in result.stdout + result.stderr and REFUSED not in result.stdout + result.stderr
