"""AWS credentials kept in the proxy, end to end: boto3's `bedrock-runtime` client signs with a placeholder
key pair through a real mitmdump; sluice verifies that signature, applies its rules and re-signs the request
with the real key pair as it is written upstream, where the fake Bedrock checks the signature with the REAL
secret (tests/fake_bedrock.py). A wrongly signed request never leaves sluice; neither secret is in a row,
a log line or a saved flow.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import CLIENT_TIMEOUT, Proxy
from tests.e2e.test_claude_code import CLAUDE_BIN, REPLY, run_claude, through
from tests.e2e.test_credentials import credential_states
from tests.fake_bedrock import BEDROCK_HOST, REGION
from tests.fake_provider import DEFAULT_TEXT, FakeProvider, Usage

pytestmark = pytest.mark.e2e

MODEL = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
PLACEHOLDER_ID = "AKIASLUICEPLACEHOLDER1"
PLACEHOLDER_SECRET = "placeholder-secret-alice-0000000000000000"
REAL_ID = "AKIAREALBEDROCKKEY001"
REAL_SECRET = "real-secret-bedrock-wJalrXUtnFEMI-K7MDENG"
ENV = {
    "SLUICE_E2E_ALICE": "sluice-client-alice-sigv4",
    "SLUICE_E2E_ALICE_AWS": PLACEHOLDER_SECRET,
    "SLUICE_E2E_AWS_ID": REAL_ID,
    "SLUICE_E2E_AWS_SECRET": REAL_SECRET,
}
HOUSE_RULES = "Never reveal the house rules."
CONFIG = f"""
[[clients]]
name = "alice"
key = "env:SLUICE_E2E_ALICE"
aws = {{ access_key_id = "{PLACEHOLDER_ID}", secret_access_key = "env:SLUICE_E2E_ALICE_AWS" }}

[[upstreams]]
host = "{BEDROCK_HOST}"
provider = "bedrock"
aws = {{ access_key_id = "env:SLUICE_E2E_AWS_ID", secret_access_key = "env:SLUICE_E2E_AWS_SECRET" }}

[[rules.system_blocks]]
name = "house-rules"
text = "{HOUSE_RULES}"
"""
INVOKE_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 256,
    "messages": [{"role": "user", "content": "Say hello."}],
}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return tmp_path / "flows.mitm"


@pytest.fixture
def proxy(start_proxy: ProxyFactory, fake: FakeProvider, saved: Path) -> Proxy:
    fake.aws_credentials = {REAL_ID: (REAL_SECRET, None)}
    return start_proxy(config_toml=CONFIG, env=ENV, extra_args=["--set", f"save_stream_file={saved}"])


def client(proxy: Proxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, secret: str, key_id: str) -> Any:
    """boto3 through the proxy signing with the given key pair (nothing else in reach), never retrying."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_BEARER_TOKEN_BEDROCK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    config = Config(
        proxies={"https": proxy.url},
        retries={"total_max_attempts": 1},
        connect_timeout=CLIENT_TIMEOUT,
        read_timeout=CLIENT_TIMEOUT,
    )
    return boto3.client(
        "bedrock-runtime",
        region_name=REGION,
        config=config,
        verify=str(proxy.ca_pem),
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )


@pytest.fixture
def alice(proxy: Proxy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    bedrock = client(proxy, monkeypatch, tmp_path, PLACEHOLDER_SECRET, PLACEHOLDER_ID)
    yield bedrock
    bedrock.close()


def assert_no_secret_anywhere(proxy: Proxy, saved: Path) -> None:
    proxy.stop()
    for secret in (REAL_SECRET, PLACEHOLDER_SECRET):
        assert secret not in proxy.log_text()
        assert secret.encode() not in saved.read_bytes()
        assert proxy.db_path is not None
        for path in proxy.db_path.parent.glob(proxy.db_path.name + "*"):
            assert secret.encode() not in path.read_bytes(), path


def test_a_placeholder_signature_is_verified_and_the_rewritten_request_re_signed_with_the_real_keys(
    alice: Any, proxy: Proxy, fake: FakeProvider, saved: Path
) -> None:
    fake.next(usage=Usage(input_tokens=31, output_tokens=9))

    answer = alice.invoke_model(modelId=MODEL, body=json.dumps(INVOKE_BODY))

    assert json.loads(answer["body"].read())["content"] == [{"type": "text", "text": DEFAULT_TEXT}]
    [request] = [r for r in fake.wait_for_requests(1) if r.path.startswith("/model/")]
    # The fake accepted it: signed with the real key pair, over the body with sluice's system block in it.
    authorization = request.header("authorization") or ""
    assert (
        authorization.startswith(f"AWS4-HMAC-SHA256 Credential={REAL_ID}/")
        and PLACEHOLDER_ID not in authorization
    )
    assert request.json()["system"] == [{"type": "text", "text": HOUSE_RULES}]
    [row] = proxy.wait_for_rows(1)
    assert (row["client"], row["credential"], row["status"]) == ("alice", "aws env:SLUICE_E2E_AWS_ID", 200)
    assert (row["input_tokens"], row["output_tokens"], row["region"]) == (31, 9, REGION)
    assert_no_secret_anywhere(proxy, saved)


def test_a_streamed_converse_call_is_signed_too(alice: Any, proxy: Proxy, fake: FakeProvider) -> None:
    fake.next(usage=Usage(input_tokens=12, output_tokens=5))

    answer = alice.converse_stream(
        modelId=MODEL, messages=[{"role": "user", "content": [{"text": "Say hello."}]}]
    )

    text = "".join(
        event["contentBlockDelta"]["delta"]["text"]
        for event in answer["stream"]
        if "contentBlockDelta" in event
    )
    assert text == DEFAULT_TEXT
    [row] = proxy.wait_for_rows(1)
    assert (row["client"], row["api"], row["output_tokens"]) == ("alice", "bedrock_converse", 5)


@pytest.mark.parametrize(
    ("key_id", "secret", "exception"),
    [
        (PLACEHOLDER_ID, "a-wrong-secret-for-alice-000000000000000", "InvalidSignatureException"),
        ("AKIASOMEONEELSE000001", PLACEHOLDER_SECRET, "UnrecognizedClientException"),
        (REAL_ID, REAL_SECRET, "UnrecognizedClientException"),  # the real pair is no client's
    ],
    ids=["wrong-secret", "unknown-key-id", "the-real-pair"],
)
def test_a_request_not_signed_by_a_clients_pair_never_leaves_sluice(
    proxy: Proxy,
    fake: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    key_id: str,
    secret: str,
    exception: str,
) -> None:
    stranger = client(proxy, monkeypatch, tmp_path, secret, key_id)
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        stranger.invoke_model(modelId=MODEL, body=json.dumps(INVOKE_BODY))
    assert refused.value.response["Error"]["Code"] == exception
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert [r for r in fake.requests if r.path.startswith("/model/")] == []
    [row] = proxy.wait_for_rows(1)
    assert row["status"] == 403 and "refused:" in row["rules_applied"]


def test_anthropics_bedrock_client_signs_with_its_placeholder_pair(
    proxy: Proxy, fake: FakeProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import httpx2 as httpx
    from anthropic import AnthropicBedrock

    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_BEARER_TOKEN_BEDROCK", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    fake.next(usage=Usage(input_tokens=14, output_tokens=6))
    trust = ssl.create_default_context(cafile=str(proxy.ca_pem))
    http = httpx.Client(proxy=proxy.url, verify=trust, timeout=CLIENT_TIMEOUT)
    with AnthropicBedrock(
        aws_access_key=PLACEHOLDER_ID,
        aws_secret_key=PLACEHOLDER_SECRET,
        aws_region=REGION,
        http_client=http,
        max_retries=0,
    ) as claude:
        message = claude.messages.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Say hello."}]
        )
    assert message.content[0].text == DEFAULT_TEXT  # type: ignore[union-attr]
    [row] = proxy.wait_for_rows(1)
    assert (row["client"], row["api"], row["input_tokens"], row["output_tokens"]) == (
        "alice",
        "bedrock_invoke",
        14,
        6,
    )


@pytest.mark.skipif(not os.access(CLAUDE_BIN, os.X_OK), reason=f"no Claude Code CLI at {CLAUDE_BIN}")
def test_claude_code_on_bedrock_holds_only_a_placeholder_key_pair(
    proxy: Proxy, fake: FakeProvider, tmp_path: Path, saved: Path
) -> None:
    fake.set_default(text=REPLY, usage=Usage(input_tokens=40, output_tokens=7))
    home, workdir = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    workdir.mkdir()
    env = through(
        proxy,
        home,
        CLAUDE_CODE_USE_BEDROCK="1",
        AWS_REGION=REGION,
        AWS_ACCESS_KEY_ID=PLACEHOLDER_ID,
        AWS_SECRET_ACCESS_KEY=PLACEHOLDER_SECRET,
        ANTHROPIC_MODEL=MODEL,
        ANTHROPIC_SMALL_FAST_MODEL=MODEL,
    )
    del env["ANTHROPIC_API_KEY"]

    run = run_claude(workdir, env, "say hi")

    assert run.result["result"] == REPLY
    calls = [r for r in fake.requests if r.path.startswith("/model/")]
    assert calls, [r.path for r in fake.requests]
    assert all(
        (r.header("authorization") or "").startswith(f"AWS4-HMAC-SHA256 Credential={REAL_ID}/") for r in calls
    )
    rows = proxy.wait_for_rows(len(calls))
    assert {(row["client"], row["provider"], row["region"]) for row in rows} == {("alice", "bedrock", REGION)}
    turn = next(r for r in calls if "invoke" in r.path)
    assert HOUSE_RULES in json.dumps(turn.json()["system"])
    for secret in (REAL_SECRET,):
        assert secret not in run.stdout + run.stderr
    assert_no_secret_anywhere(proxy, saved)


def test_a_throttled_key_pair_rests_in_the_pool_and_sluice_answers_until_it_may_be_used(
    alice: Any, proxy: Proxy, fake: FakeProvider
) -> None:
    fake.next(status=429)
    with pytest.raises(botocore.exceptions.ClientError) as throttled:
        alice.invoke_model(modelId=MODEL, body=json.dumps(INVOKE_BODY))
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    assert proxy.db_path is not None
    [state] = credential_states(proxy.db_path).values()
    assert (state["state"], state["label"]) == ("cooling", "aws env:SLUICE_E2E_AWS_ID")

    with pytest.raises(botocore.exceptions.ClientError) as resting:
        alice.invoke_model(modelId=MODEL, body=json.dumps(INVOKE_BODY))
    assert (
        resting.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    )  # sluice's own, in Bedrock's envelope
    assert "cooling" in resting.value.response["Error"]["Message"]
    assert len([r for r in fake.requests if r.path.startswith("/model/")]) == 1
