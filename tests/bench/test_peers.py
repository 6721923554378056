"""`--peers` runs LiteLLM's proxy as a fair peer: on loopback, one worker, logging off, no database, trusting
only the bench CA, forwarding to the bench upstream and nowhere else. These tests need no LiteLLM: they
check what the benchmark would start it with, and how it finds or installs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.peers import (
    INSTALLED_MARK,
    PEER_PHASES,
    PEER_SKIPPED,
    installed_version,
    litellm_command,
    litellm_config,
    litellm_env,
    litellm_venv,
    peer_report,
)
from bench.processes import BenchError
from bench.run import PROXY_PHASES

CALLER = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/someone",
    "DATABASE_URL": "postgresql://prod/litellm",
    "LITELLM_MASTER_KEY": "sk-the-callers-own",
    "ANTHROPIC_API_KEY": "sk-ant-api03-a-real-key",
    "ANTHROPIC_BASE_URL": "https://api.anthropic.com",
    "SSL_CERT_DIR": "/etc/ssl/certs",
    "REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",
    "REDIS_HOST": "cache.internal",
    "PYTHONPATH": "/somewhere/sitecustomize",
}


def env_for(tmp_path: Path) -> dict[str, str]:
    return litellm_env(
        CALLER,
        upstream_port=4443,
        ca_cert=tmp_path / "ca-cert.pem",
        client_key="sk-ant-bench-client-1",
        upstream_key="sk-ant-api03-bench-upstream",
    )


def test_the_peer_has_a_master_key_and_no_database() -> None:
    config = litellm_config()
    assert config == {"general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"}}
    assert "database_url" not in json.dumps(config)


def test_the_peer_forwards_to_the_bench_upstream_trusting_only_the_bench_ca(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    assert env["ANTHROPIC_API_BASE"] == "https://127.0.0.1:4443"
    assert env["SSL_CERT_FILE"] == str(tmp_path / "ca-cert.pem")
    assert env["ANTHROPIC_API_KEY"] == "sk-ant-api03-bench-upstream"  # swapped in for the client's key
    assert env["LITELLM_MASTER_KEY"] == "sk-ant-bench-client-1"
    assert env["LITELLM_LOG"] == "ERROR"
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"  # no fetch of the cost map at start


def test_the_callers_database_keys_and_certificates_do_not_reach_the_peer(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    for name in ("DATABASE_URL", "ANTHROPIC_BASE_URL", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "REDIS_HOST"):
        assert name not in env
    assert "PYTHONPATH" not in env  # the peer's virtualenv alone, no sitecustomize of the test suite's
    assert "sk-the-callers-own" not in env.values() and "sk-ant-api03-a-real-key" not in env.values()
    assert env["PATH"] == "/usr/bin:/bin" and env["HOME"] == "/home/someone"


def test_the_peer_runs_one_worker_on_loopback(tmp_path: Path) -> None:
    args = litellm_command(tmp_path / "venv", tmp_path / "config.yaml", 4000)
    assert args[0] == str(tmp_path / "venv" / "bin" / "litellm")
    assert args[args.index("--host") + 1] == "127.0.0.1"
    assert args[args.index("--port") + 1] == "4000"
    assert args[args.index("--num_workers") + 1] == "1"
    assert args[args.index("--config") + 1] == str(tmp_path / "config.yaml")
    assert "--detailed_debug" not in args and "--debug" not in args


def installed(cache: Path) -> None:
    (cache / "bin").mkdir(parents=True)
    (cache / "bin" / "litellm").write_text("#!/bin/sh\n")


def test_an_installed_virtualenv_is_reused(tmp_path: Path) -> None:
    cache = tmp_path / "litellm"
    installed(cache)
    (cache / INSTALLED_MARK).write_text("litellm[proxy]\n")
    # An interpreter that cannot run: reuse must not try to install anything.
    assert litellm_venv(cache, python=str(tmp_path / "no-python")) == cache


def test_a_half_made_virtualenv_is_made_again_and_a_failed_install_says_why(tmp_path: Path) -> None:
    cache = tmp_path / "litellm"
    installed(cache)  # no mark: an install that was interrupted
    with pytest.raises(BenchError) as failed:
        litellm_venv(cache, python="/bin/false")
    message = str(failed.value)
    assert "could not install litellm[proxy]" in message and str(cache) in message
    assert "venv exited with 1" in message and "PyPI" in message
    assert not cache.exists()  # neither the old half nor the new one is left to be taken as installed
    assert (tmp_path / "litellm-install.log").exists()


def test_an_interpreter_that_does_not_exist_is_a_clear_failure(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="could not install litellm"):
        litellm_venv(tmp_path / "litellm", python=str(tmp_path / "no-python"))


def test_the_version_comes_from_the_installed_distribution(tmp_path: Path) -> None:
    assert installed_version(tmp_path) is None
    (tmp_path / "lib" / "python3.12" / "site-packages" / "litellm-1.80.2.dist-info").mkdir(parents=True)
    assert installed_version(tmp_path) == "1.80.2"


def test_the_report_says_what_the_peer_ran_and_why_it_skipped_the_rest(tmp_path: Path) -> None:
    report = peer_report(tmp_path, ("latency", "fleet", "bomb", "rewrite"))
    assert report["phases"] == ["latency"]
    assert set(report["skipped"]) == {"fleet", "bomb"} and all(report["skipped"].values())
    assert report["workers"] == 1 and report["database"] is None
    assert "plain HTTP" in report["client_hop"] and "SSL_CERT_FILE" in report["upstream_hop"]


def test_every_proxy_phase_is_run_or_skipped_with_a_reason() -> None:
    assert set(PEER_PHASES) | set(PEER_SKIPPED) == set(PROXY_PHASES)
    assert not set(PEER_PHASES) & set(PEER_SKIPPED)
