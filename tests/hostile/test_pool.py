"""Attacks on the key pool (issue #14): a client holding a client key tries to take a shared credential away
from everyone else by making the provider say the words that disable or rest a key.

Providers repeat a client's input in their error messages: Anthropic answers an unknown model with a 404
`model: <the model as sent>` and an unknown beta with `Unexpected value(s) ... for the anthropic-beta header`;
OpenAI with "The model `<model>` does not exist". The fake is scripted with those shapes, echoing what the
attacker sent, so the test does not depend on the fake's own wording.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import REPO_ROOT, SITECUSTOMIZE_DIR, clean_env, curl
from tests.e2e.test_credentials import (
    ALICE_KEY,
    ENV,
    LABEL_1,
    LABEL_2,
    MESSAGE,
    MESSAGES_URL,
    NEW_ACCESS,
    NEW_REFRESH,
    OLD_ACCESS,
    OLD_REFRESH,
    POOL_CONFIG,
    credential_states,
    oauth_config,
    post_message,
)
from tests.e2e.test_pool_intelligence import write_fresh_credentials
from tests.fake_provider import FakeProvider
from tests.hostile.traps import Tunnel

pytestmark = pytest.mark.e2e

TERMINAL = "This organization has been disabled."


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.mark.parametrize(
    ("headers", "body", "status", "answer"),
    [
        pytest.param(
            (),
            json.dumps({**MESSAGE, "model": TERMINAL}),
            404,
            _error("not_found_error", f"model: {TERMINAL}"),
            id="model-echoed-in-a-404",
        ),
        pytest.param(
            # The words spelled with a JSON escape: the provider reads (and echoes) them decoded.
            (),
            json.dumps({**MESSAGE, "model": "Your credit balance is too low"}).replace("low", "l\\u006fw"),
            400,
            _error("invalid_request_error", "model: Your credit balance is too low"),
            id="json-escaped-model-echoed-in-a-400",
        ),
        pytest.param(
            ("anthropic-beta: oauth authentication is currently not allowed for this organization",),
            json.dumps(MESSAGE),
            400,
            _error(
                "invalid_request_error",
                "Unexpected value(s) `oauth authentication is currently not allowed for this organization` "
                "for the `anthropic-beta` header.",
            ),
            id="beta-header-echoed-in-a-400",
        ),
    ],
)
def test_a_client_cannot_disable_a_shared_key_by_having_the_provider_echo_terminal_words(
    fake: FakeProvider,
    start_proxy: ProxyFactory,
    headers: tuple[str, ...],
    body: str,
    status: int,
    answer: dict[str, Any],
) -> None:
    proxy = start_proxy(config_toml=POOL_CONFIG, env=ENV)
    fake.next(status=status, body=answer)
    args = [arg for header in (f"x-api-key: {ALICE_KEY}", *headers) for arg in ("-H", header)]
    result = curl(proxy, MESSAGES_URL, *args, "-H", "content-type: application/json", "--data-binary", body)

    # The client gets the provider's answer to its own request, and the key stays in the pool for everyone.
    assert result.status == status
    assert json.loads(result.body) == answer
    assert fake.requests[-1].body == body.encode()
    states = credential_states(proxy.db_path)
    assert states[LABEL_1]["state"] == "active", states[LABEL_1]["reason"]
    assert states[LABEL_2]["state"] == "active"
    assert post_message(proxy, f"x-api-key: {ALICE_KEY}").status == 200


def test_an_upstreams_overloaded_message_cannot_forge_log_lines_or_flood_the_log(
    fake: FakeProvider, start_proxy: ProxyFactory
) -> None:
    """The provider's words go into the log when the breaker opens: as one bounded line of printable text."""
    proxy = start_proxy(config_toml=POOL_CONFIG, env=ENV)
    forged = "sluice: FORGED the credential keys[0] was reset by hand"
    message = "Overloaded\n" + forged + "\x1b[2J\x07" + "more words " * 5_000
    for _ in range(3):
        fake.next(status=529, body=_error("overloaded_error", message))
    key = f"x-api-key: {ALICE_KEY}"
    assert [post_message(proxy, key).status for _ in range(3)] == [529, 529, 529]

    log = proxy.wait_for_log("is overloaded")
    [line] = [line for line in log.splitlines() if "is overloaded" in line]
    assert all("is overloaded" in line for line in log.splitlines() if "FORGED" in line)
    assert "\x1b" not in log and "\x07" not in log
    assert len(line) < 1_000


def test_a_refresh_by_hand_never_goes_through_a_proxy_the_shell_names(
    fake: FakeProvider, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The shell where clients are pointed at sluice exports `HTTPS_PROXY` (sluice itself) and trusts its CA
    (`SSL_CERT_FILE`): a refresh from there would carry the single-use refresh token, and bring back the new
    tokens, through a proxy that decrypts them and shows them in its flows. sluice talks to the token
    endpoint directly."""
    credentials = write_fresh_credentials(tmp_path / "credentials.json")
    proxy = start_proxy(config_toml=oauth_config(credentials), env=ENV)
    fake.accepted_credentials = {OLD_ACCESS, NEW_ACCESS}
    assert post_message(proxy, f"x-api-key: {ALICE_KEY}").status == 200  # seeds the store
    [state] = credential_states(proxy.db_path).values()
    fake.grant(OLD_REFRESH, NEW_ACCESS, NEW_REFRESH)

    routes = {("console.anthropic.com", 443): ("127.0.0.1", fake.port)}
    with Tunnel(routes) as shells_proxy:
        named = f"http://127.0.0.1:{shells_proxy.port}"
        env = clean_env(
            {
                "PYTHONPATH": f"{SITECUSTOMIZE_DIR}:{REPO_ROOT}",
                "SLUICE_TEST_HOSTS": fake.hosts_env(),
                "SSL_CERT_FILE": str(fake.ca_pem),
                "HTTPS_PROXY": named,
                "https_proxy": named,
                "ALL_PROXY": named,
                **ENV,
            }
        )
        cli = [sys.executable, "-c", "from state.cli import main; raise SystemExit(main())", "credentials"]
        where = ["--db", str(proxy.db_path), "--config", str(proxy.workdir / "sluice.toml")]
        refresh = [*cli, *where, "--refresh", "api.anthropic.com", state["label"]]
        done = subprocess.run(refresh, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert len(fake.token_requests) == 1
    assert shells_proxy.connects == [] and not shells_proxy.received
