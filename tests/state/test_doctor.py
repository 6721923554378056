from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from state import doctor
from state.cli import main
from state.doctor import Check
from state.store import redact
from tests.postgres import PostgresServer

CA_PEM = "-----BEGIN CERTIFICATE-----\nTUlUTVBST1hZLUNB\nQ0EtQk9EWQ==\n-----END CERTIFICATE-----\n"
OTHER_PEM = "-----BEGIN CERTIFICATE-----\nT1RIRVItQ0E=\n-----END CERTIFICATE-----\n"
SECRET = "sk-ant-api03-DOCTOR-NEVER-PRINTS-THIS"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    directory = tmp_path / "mitm"
    directory.mkdir()
    (directory / "mitmproxy-ca-cert.pem").write_text(CA_PEM)
    return directory


@pytest.fixture
def listening() -> int:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_versions_pass_on_this_interpreter_and_name_what_is_needed_otherwise() -> None:
    assert doctor.check_python().status == "pass"
    old = doctor.check_python((3, 11, 9))
    assert old.status == "fail" and "3.12" in old.detail and "PYTHON=" in old.advice
    assert doctor.check_mitmproxy().status == "pass"
    eleven = doctor.check_mitmproxy(lambda name: "11.1.0")
    assert eleven.status == "fail" and "12.x" in eleven.detail


def test_a_missing_ca_says_to_start_the_proxy_once(tmp_path: Path) -> None:
    check = doctor.check_ca(tmp_path)
    assert check.status == "fail"
    assert str(tmp_path / "mitmproxy-ca-cert.pem") in check.detail
    assert "start the proxy once" in check.advice


def test_trust_names_the_variables_that_point_at_the_ca(confdir: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(OTHER_PEM + CA_PEM)  # a bundle that holds the CA among others counts
    env = {
        "HTTPS_PROXY": "http://127.0.0.1:8080",
        "NODE_EXTRA_CA_CERTS": str(confdir / "mitmproxy-ca-cert.pem"),
    }
    env["SSL_CERT_FILE"] = str(bundle)
    check = doctor.check_trust(env, confdir)
    assert check.status == "pass"
    assert "NODE_EXTRA_CA_CERTS" in check.detail and "SSL_CERT_FILE" in check.detail
    assert "REQUESTS_CA_BUNDLE" not in check.detail


def test_a_trust_variable_pointing_elsewhere_fails_with_the_export_to_run(
    confdir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "system.pem"
    other.write_text(OTHER_PEM)
    env = {
        "HTTPS_PROXY": "http://127.0.0.1:8080",
        "SSL_CERT_FILE": str(other),
        "NODE_EXTRA_CA_CERTS": "/no/file",
    }
    check = doctor.check_trust(env, confdir)
    assert check.status == "fail"
    assert f"SSL_CERT_FILE={other} does not hold the mitmproxy CA" in check.detail
    assert "NODE_EXTRA_CA_CERTS=/no/file is not a file" in check.detail
    assert f"SSL_CERT_FILE={confdir / 'mitmproxy-ca-cert.pem'}" in check.advice


def test_a_proxy_with_no_trust_at_all_fails(confdir: Path) -> None:
    check = doctor.check_trust({"HTTPS_PROXY": "http://127.0.0.1:8080"}, confdir)
    assert check.status == "fail" and "export NODE_EXTRA_CA_CERTS=" in check.advice


def test_without_https_proxy_trust_is_not_needed(confdir: Path) -> None:
    assert doctor.check_trust({}, confdir).status == "skip"


def test_https_proxy_reaching_a_listening_port_passes(listening: int) -> None:
    check = doctor.check_proxy({"HTTPS_PROXY": f"http://127.0.0.1:{listening}"})
    assert check.status == "pass"


def test_https_proxy_where_nothing_listens_says_to_start_it() -> None:
    port = _free_port()
    check = doctor.check_proxy({"https_proxy": f"http://127.0.0.1:{port}"})
    assert check.status == "fail"
    assert f"nothing listens at 127.0.0.1:{port} (https_proxy)" in check.detail
    assert f"scripts/run --listen-port {port}" in check.advice


@pytest.mark.parametrize(
    "no_proxy", ["*", "api.anthropic.com", ".anthropic.com", "localhost,anthropic.com:443"]
)
def test_no_proxy_that_sends_a_provider_around_the_proxy_fails(listening: int, no_proxy: str) -> None:
    check = doctor.check_proxy({"HTTPS_PROXY": f"http://127.0.0.1:{listening}", "NO_PROXY": no_proxy})
    assert check.status == "fail"
    assert "api.anthropic.com" in check.detail and "NO_PROXY" in check.advice


def test_no_proxy_for_other_hosts_is_fine(listening: int) -> None:
    env = {"HTTPS_PROXY": f"http://127.0.0.1:{listening}", "NO_PROXY": "localhost,127.0.0.1,.internal"}
    assert doctor.check_proxy(env).status == "pass"


def test_an_https_proxy_url_is_refused() -> None:
    check = doctor.check_proxy({"HTTPS_PROXY": "https://127.0.0.1:8080"})
    assert check.status == "fail" and "export HTTPS_PROXY=http://127.0.0.1:8080" in check.advice


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return str(path)


TEAM = """
[[clients]]
name = "alice"
key = "env:DOCTOR_CLIENT"
[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:DOCTOR_KEY_1", "file:key2.txt"]
"""


def test_a_config_whose_references_resolve_passes_without_showing_them(tmp_path: Path) -> None:
    (tmp_path / "key2.txt").write_text(SECRET + "2\n")
    env = {"DOCTOR_CLIENT": "alice-key", "DOCTOR_KEY_1": SECRET}
    check, config = doctor.check_config(_config(tmp_path, TEAM), env)
    assert check.status == "pass" and "3 secret reference(s) resolve" in check.detail
    assert config is not None
    assert SECRET not in repr(check)


def test_an_unset_variable_and_a_missing_file_are_named(tmp_path: Path) -> None:
    check, _ = doctor.check_config(_config(tmp_path, TEAM), {"DOCTOR_CLIENT": "alice-key"})
    assert check.status == "fail"
    assert "upstreams[0].keys[0]: environment variable DOCTOR_KEY_1 is not set or empty" in check.detail
    assert "upstreams[0].keys[1]: cannot read" in check.detail and "key2.txt" in check.detail
    assert "export the variables named" in check.advice


def test_a_config_that_does_not_load_shows_its_fields(tmp_path: Path) -> None:
    check, config = doctor.check_config(_config(tmp_path, "[rules]\ncache_control_maxx = 3\n"), {})
    assert check.status == "fail" and config is None
    assert 'rules.cache_control_maxx: unknown field (did you mean "cache_control_max"?)' in check.detail


def test_no_config_is_skipped() -> None:
    assert doctor.check_config(None, {})[0].status == "skip"


def test_a_database_that_cannot_be_created_or_is_not_sqlite_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    check = doctor.check_database(str(blocker / "sluice.db"))
    assert check.status == "fail" and "is not a writable folder" in check.detail
    notes = tmp_path / "notes.db"
    notes.write_text("plain text, not SQLite " * 100)
    check = doctor.check_database(str(notes))
    assert check.status == "fail" and "cannot be written" in check.detail
    assert doctor.check_database(str(tmp_path / "new.db")).status == "pass"
    assert not (tmp_path / "new.db").exists()  # looking never creates it


def test_online_each_key_is_asked_for_the_model_list_and_a_refused_one_fails(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "key2.txt").write_text("sk-ant-refused\n")
    monkeypatch.setenv("DOCTOR_CLIENT", "alice-key")
    monkeypatch.setenv("DOCTOR_KEY_1", SECRET)
    path = _config(tmp_path, TEAM)
    _, config = doctor.check_config(path, None)
    asked: list[urllib.request.Request] = []

    def fetch(request: urllib.request.Request) -> int:
        asked.append(request)
        return 200 if request.get_header("X-api-key") == SECRET else 401

    checks = doctor.check_credentials_online(config, path, fetch)
    assert [check.status for check in checks] == ["pass", "fail"]
    assert [request.full_url for request in asked] == ["https://api.anthropic.com/v1/models"] * 2
    assert checks[1].detail == "file:key2.txt was refused (401): the provider does not accept this key"
    assert "replace the key file:key2.txt names" in checks[1].advice
    assert all(SECRET not in repr(check) and "sk-ant-refused" not in repr(check) for check in checks)


def test_doctor_exits_0_only_when_nothing_fails(
    tmp_path: Path,
    confdir: Path,
    listening: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ca = str(confdir / "mitmproxy-ca-cert.pem")
    for name in doctor.TRUST_VARIABLES:
        monkeypatch.setenv(name, ca)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{listening}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    db = str(tmp_path / "sluice.db")
    assert main(["doctor", "--db", db, "--confdir", str(confdir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert {check["name"]: check["status"] for check in report["checks"]} == {
        "python": "pass",
        "mitmproxy": "pass",
        "mitmproxy CA": "pass",
        "CA trust": "pass",
        "proxy": "pass",
        "config": "skip",
        "database": "pass",
    }
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nowhere.pem"))
    assert main(["doctor", "--db", db, "--confdir", str(confdir)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  CA trust" in out and "-> point it at the CA: export" in out
    assert out.rstrip().endswith("1 check(s) failed")


def test_a_check_is_plain_data() -> None:
    assert Check("x", "skip", "why").to_dict() == {
        "name": "x",
        "status": "skip",
        "detail": "why",
        "advice": "",
    }


def test_the_sluice_command_and_doctor_never_import_mitmproxy() -> None:
    # state/ never imports mitmproxy; only `sluice replay` loads it (addons/replay.py), when it runs.
    code = (
        "import sys; from state.cli import main, build_parser; from state import doctor; build_parser(); "
        "print('mitmproxy' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "False"


def test_a_postgresql_database_is_checked_on_its_server_and_named_without_its_password(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    assert postgres_server.password in postgres_url
    check = doctor.check_database(postgres_url)
    assert check.status == "pass" and postgres_server.password not in check.detail
    assert check.detail == f"{redact(postgres_url)} can be written"
    wrong = postgres_url.replace(postgres_server.password, "not-" + postgres_server.password)
    check = doctor.check_database(wrong)
    assert check.status == "fail" and postgres_server.password not in check.detail + check.advice
    assert check.detail.startswith(f"{redact(wrong)} cannot be opened: ")
