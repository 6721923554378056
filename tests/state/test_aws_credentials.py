"""An upstream's real AWS credentials: static, a profile, or an assumed role refreshed ahead of expiry."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rules.config import AwsCredentials, ConfigError
from state.aws_credentials import credential_source


def test_static_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REAL_AWS_KEY", "AKIAREAL0000000001")
    monkeypatch.setenv("REAL_AWS_SECRET", "real-secret-value")
    settings = AwsCredentials(access_key_id="env:REAL_AWS_KEY", secret_access_key="env:REAL_AWS_SECRET")
    current = credential_source(settings, field="upstreams[0].aws").current()
    assert (current.access_key, current.secret_key, current.token) == (
        "AKIAREAL0000000001",
        "real-secret-value",
        None,
    )


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret"
    secret.write_text("real-secret-value\n")
    secret.chmod(0o644)
    monkeypatch.setenv("REAL_AWS_KEY", "AKIAREAL0000000001")
    settings = AwsCredentials(access_key_id="env:REAL_AWS_KEY", secret_access_key=f"file:{secret}")
    with pytest.raises(ConfigError, match="chmod 600") as refused:
        credential_source(settings, field="upstreams[0].aws")
    assert "real-secret-value" not in str(refused.value)
    secret.chmod(0o600)
    assert credential_source(settings, field="upstreams[0].aws").current().secret_key == "real-secret-value"


def test_a_named_profile_goes_through_botocores_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "credentials"
    shared.write_text(
        "[bedrock]\naws_access_key_id = AKIAPROFILE00000001\naws_secret_access_key = profile-secret\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent"))
    current = credential_source(AwsCredentials(profile="bedrock"), field="upstreams[0].aws").current()
    assert (current.access_key, current.secret_key) == ("AKIAPROFILE00000001", "profile-secret")
    with pytest.raises(ConfigError, match="profile"):
        credential_source(AwsCredentials(profile="nobody"), field="upstreams[0].aws")


class FakeSts:
    """STS AssumeRole on loopback: every call mints a new session lasting `lifetime`."""

    def __init__(self) -> None:
        self.lifetime = timedelta(hours=1)
        self.calls: list[bytes] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sts = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sts.calls.append(self.rfile.read(int(self.headers["content-length"])))
                expires = (datetime.now(UTC) + sts.lifetime).strftime("%Y-%m-%dT%H:%M:%SZ")
                n = len(sts.calls)
                body = (
                    '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
                    f"<Credentials><AccessKeyId>ASIAROLE{n:012d}</AccessKeyId>"
                    f"<SecretAccessKey>role-secret-{n}</SecretAccessKey><SessionToken>role-token-{n}</SessionToken>"
                    f"<Expiration>{expires}</Expiration></Credentials>"
                    "<AssumedRoleUser><AssumedRoleId>AROA:sluice</AssumedRoleId>"
                    "<Arn>arn:aws:sts::123456789012:assumed-role/bedrock/sluice</Arn></AssumedRoleUser>"
                    "</AssumeRoleResult></AssumeRoleResponse>"
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "text/xml")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def sts() -> Iterator[FakeSts]:
    fake = FakeSts()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def role(monkeypatch: pytest.MonkeyPatch) -> AwsCredentials:
    monkeypatch.setenv("BASE_AWS_KEY", "AKIABASE00000000001")
    monkeypatch.setenv("BASE_AWS_SECRET", "base-secret")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # STS is reached directly, never through it
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    return AwsCredentials(
        access_key_id="env:BASE_AWS_KEY",
        secret_access_key="env:BASE_AWS_SECRET",
        role_arn="arn:aws:iam::123456789012:role/bedrock",
        external_id="tenant-7",
    )


def test_an_assumed_role_session_is_fetched_once_while_fresh(
    sts: FakeSts, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = credential_source(role(monkeypatch), field="upstreams[0].aws", sts_endpoint=sts.url)
    first, second = source.current(), source.current()
    assert (first.access_key, first.secret_key, first.token) == (
        "ASIAROLE000000000001",
        "role-secret-1",
        "role-token-1",
    )
    assert second == first and len(sts.calls) == 1
    assert b"ExternalId=tenant-7" in sts.calls[0] and b"RoleSessionName=sluice" in sts.calls[0]


def test_an_assumed_role_session_is_renewed_ahead_of_its_expiry(
    sts: FakeSts, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A session with five minutes left is inside botocore's mandatory refresh window: the next signature
    # gets a new one before the old one can expire mid-request.
    sts.lifetime = timedelta(minutes=5)
    source = credential_source(role(monkeypatch), field="upstreams[0].aws", sts_endpoint=sts.url)
    first, second = source.current(), source.current()
    assert first.token == "role-token-1" and second.token == "role-token-2"
    assert len(sts.calls) == 2
