from __future__ import annotations

from pathlib import Path

import pytest

from rules.config import Config, parse_config
from state.sandbox import Request
from state.sandbox_env import Account, SandboxError, command_environment

CONFIG = """
[[clients]]
name = "agent"
key = "env:SBX_CLIENT"

[[clients]]
name = "other"
key = "env:SBX_OTHER"

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:SBX_REAL_ANT", "file:real-key.txt"]

[[upstreams]]
host = "api.openai.com"
provider = "openai"
keys = ["env:SBX_REAL_OAI"]

[[upstreams]]
host = "recorded.example"
provider = "openai"

[sandbox]
client = "agent"
"""
ENVIRON = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/root",
    "SBX_CLIENT": "sk-client-agent-123456",
    "SBX_OTHER": "sk-client-other-654321",
    "SBX_REAL_ANT": "sk-ant-REAL-from-env-0001",
    "SBX_REAL_OAI": "sk-proj-REAL-from-env-0002",
    "LEAKY_COPY": "prefix sk-ant-REAL-from-file-0003 suffix",  # a real key under another name
    "ANTHROPIC_AUTH_TOKEN": "a token of the caller's own",
    "HTTPS_PROXY": "http://127.0.0.1:8080",
    "no_proxy": "localhost",
}
CA = (Path("/tmp/sluice-ca.pem"), Path("/tmp/ca-bundle.pem"))


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The config's references are resolved from the process environment, as sluice resolves them."""
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)


def request(tmp_path: Path, **fields: object) -> Request:
    (tmp_path / "real-key.txt").write_text("sk-ant-REAL-from-file-0003\n")
    config = tmp_path / "sluice.toml"
    config.write_text(CONFIG)
    return Request(config=config, db=tmp_path / "sluice.db", command=["true"], **fields)  # type: ignore[arg-type]


def environment(
    config: Config, req: Request, account: Account | None, environ: dict[str, str] = ENVIRON
) -> dict[str, str]:
    return command_environment(environ, config, req.config.parent, req.client, CA, account)


def test_the_command_gets_its_client_key_and_the_ca_and_no_real_key_nor_proxy(tmp_path: Path) -> None:
    req = request(tmp_path)
    env = environment(parse_config(CONFIG), req, None)
    assert env["ANTHROPIC_API_KEY"] == env["OPENAI_API_KEY"] == "sk-client-agent-123456"
    assert env["NODE_EXTRA_CA_CERTS"] == "/tmp/sluice-ca.pem"
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == env["CURL_CA_BUNDLE"] == "/tmp/ca-bundle.pem"
    assert (env["PATH"], env["HOME"]) == ("/usr/bin:/bin", "/root")
    text = repr(env)
    for secret in ("REAL", "sk-client-other"):
        assert secret not in text
    for gone in ("SBX_CLIENT", "SBX_OTHER", "LEAKY_COPY", "ANTHROPIC_AUTH_TOKEN", "HTTPS_PROXY", "no_proxy"):
        assert gone not in env


def test_another_user_gets_their_own_home(tmp_path: Path) -> None:
    account = Account("nobody", 65534, 65534, "/nonexistent")
    env = environment(parse_config(CONFIG), request(tmp_path), account)
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == ("/nonexistent", "nobody", "nobody")


def test_the_client_is_named_by_the_flag_over_the_config(tmp_path: Path) -> None:
    env = environment(parse_config(CONFIG), request(tmp_path, client="other"), None)
    assert env["ANTHROPIC_API_KEY"] == "sk-client-other-654321"
    with pytest.raises(SandboxError, match="no \\[\\[clients\\]\\] entry is named 'nobody'"):
        environment(parse_config(CONFIG), request(tmp_path, client="nobody"), None)


def test_with_several_clients_and_none_named_the_sandbox_asks(tmp_path: Path) -> None:
    config = parse_config(CONFIG.replace('client = "agent"', ""))
    with pytest.raises(SandboxError, match="name the sandbox's with --client"):
        environment(config, request(tmp_path), None)


def test_without_clients_no_key_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(
        '[[upstreams]]\nhost = "api.anthropic.com"\nprovider = "anthropic"\nkeys = ["env:K"]\n'
    )
    monkeypatch.setenv("K", "sk-ant-REAL-0004-abcdef")
    env = environment(config, request(tmp_path), None, {"K": "sk-ant-REAL-0004-abcdef"})
    assert "ANTHROPIC_API_KEY" not in env and "K" not in env


def test_a_gemini_or_gateway_upstream_gets_the_key_variables_its_clients_read(tmp_path: Path) -> None:
    text = (
        CONFIG
        + '\n[[upstreams]]\nhost = "generativelanguage.googleapis.com"\nprovider = "gemini"\n'
        + 'keys = ["env:SBX_REAL_ANT"]\n'
        + '\n[[upstreams]]\nhost = "openrouter.ai"\nprovider = "openrouter"\nkeys = ["env:SBX_REAL_OAI"]\n'
    )
    environ = {**ENVIRON, "GEMINI_API_KEY": "a real Gemini key of the caller's"}
    env = environment(parse_config(text), request(tmp_path), None, environ)
    assert env["GEMINI_API_KEY"] == env["GOOGLE_API_KEY"] == env["OPENAI_API_KEY"] == "sk-client-agent-123456"
    assert "a real Gemini key" not in repr(env)
