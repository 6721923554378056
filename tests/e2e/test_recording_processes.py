"""The recording proxy as a process: reverse mode, shared databases, shutdown, start-up errors, mitmweb, and
the `sluice` reports over what real traffic recorded. Each test runs its own mitmdump (or mitmweb).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    Proxy,
    anthropic_client,
    async_anthropic_client,
    openai_client,
    rows,
    start_up_failure,
    wait_for_rows,
)
from tests.e2e.test_recording import (
    CHAT,
    CLAUDE_USAGE,
    GPT_USAGE,
    MESSAGE,
    MODEL,
    assert_priced,
    assert_timings,
    assert_tokens,
    rate_limit_headers,
    sse_records,
)
from tests.fake_provider import FakeProvider, Usage

pytestmark = pytest.mark.e2e

StartProxy = Callable[..., Proxy]


def _shared_db_args(db_path: Path) -> list[str]:
    return ["--set", f"sluice_db={db_path}"]


# 10. Reverse mode.


def test_reverse_mode_records_the_upstream_host(fake: FakeProvider, start_proxy: StartProxy) -> None:
    proxy = start_proxy(mode="reverse:https://api.anthropic.com")
    fake.next(usage=CLAUDE_USAGE, times=2)
    with anthropic_client(proxy) as client:
        message = client.messages.create(**MESSAGE)
        with client.messages.stream(**MESSAGE) as stream:
            streamed = stream.get_final_message()

    assert str(client.base_url).startswith(proxy.url)
    assert message.content[0].text == streamed.content[0].text == "Hello from the fake provider."
    assert [r.header("host") for r in fake.requests] == ["api.anthropic.com", "api.anthropic.com"]
    first, second = proxy.wait_for_rows(2)
    for row, stream in ((first, 0), (second, 1)):
        assert (row["host"], row["path"], row["provider"], row["api"]) == (
            "api.anthropic.com",
            "/v1/messages",
            "anthropic",
            "messages",
        )
        assert (row["stream"], row["status"], row["error"], row["model"]) == (stream, 200, None, MODEL)
        assert_tokens(row, CLAUDE_USAGE)
        assert_priced(row, CLAUDE_USAGE, "standard")
    assert first["response_id"] == message.id and second["response_id"] == streamed.id


# 11. Several processes, one database; shutdown drains.


def _calls_through(proxy: Proxy, n: int, errors: list[BaseException]) -> None:
    try:
        with anthropic_client(proxy) as claude, openai_client(proxy) as gpt:
            for i in range(n):
                if i % 3 == 0:
                    with claude.messages.stream(**MESSAGE) as stream:
                        stream.get_final_message()
                elif i % 3 == 1:
                    claude.messages.create(**MESSAGE)
                else:
                    list(gpt.chat.completions.create(**CHAT, stream=True))
    except BaseException as e:  # reported by the test thread
        errors.append(e)


def test_two_proxies_share_one_database(fake: FakeProvider, start_proxy: StartProxy, tmp_path: Path) -> None:
    shared = tmp_path / "shared" / "sluice.db"
    one = start_proxy(set_db=False, extra_args=_shared_db_args(shared))
    two = start_proxy(set_db=False, extra_args=_shared_db_args(shared))
    n = 5
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_calls_through, args=(p, n, errors)) for p in (one, two)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors

    wait_for_rows(shared, 2 * n)
    one.stop()
    two.stop()
    found = rows(shared)
    assert len(found) == 2 * n
    assert len({row["id"] for row in found}) == 2 * n
    sent_ids = {r.response.header("request-id") or r.response.header("x-request-id") for r in fake.requests}
    assert {row["request_id"] for row in found} == sent_ids
    assert all(row["status"] == 200 and row["error"] is None for row in found)
    assert not (one.workdir / "sluice.db").exists() and not (two.workdir / "sluice.db").exists()
    assert not one.tracebacks() and not two.tracebacks()


async def _burst(proxy: Proxy, n: int) -> None:
    async with async_anthropic_client(proxy) as client:
        await asyncio.gather(*(client.messages.create(**MESSAGE) for _ in range(n)))


def test_shutdown_drains_queued_rows_and_records_the_call_in_flight(
    fake: FakeProvider, start_proxy: StartProxy
) -> None:
    proxy = start_proxy()
    fake.next(usage=CLAUDE_USAGE, stall_after=4, stall_seconds=10)
    n = 20
    with anthropic_client(proxy) as client:
        stream = client.messages.create(**MESSAGE, stream=True)
        events = iter(stream)
        assert [next(events).type for _ in range(2)] == ["message_start", "content_block_start"]
        asyncio.run(_burst(proxy, n))
        proxy.stop()  # right after the last response (rows may still be queued), one stream still open
        with pytest.raises(Exception):  # noqa: B017 - the proxy went away under the client
            list(events)

    found = rows(proxy.db_path)
    assert len(found) == n + 1
    finished = [row for row in found if row["stream"] == 0]
    assert len(finished) == n
    assert all(row["status"] == 200 and row["error"] is None for row in finished)
    assert {row["request_id"] for row in finished} == {
        r.response.header("request-id") for r in fake.requests[1:]
    }
    [cut] = [row for row in found if row["stream"] == 1]
    assert cut["model"] == MODEL
    assert (cut["input_tokens"], cut["cache_read_tokens"]) == (1234, 5678)  # what arrived before the stop
    assert cut["error"]


# 12. Start-up: no config, a bad config, a bad database path.


def test_no_config_writes_sluice_db_in_the_working_directory(
    fake: FakeProvider, start_proxy: StartProxy
) -> None:
    proxy = start_proxy(set_db=False)
    assert not any("sluice_db" in arg or "sluice_config" in arg for arg in proxy.args)
    fake.next(usage=CLAUDE_USAGE)
    with anthropic_client(proxy) as client:
        client.messages.create(**MESSAGE)

    [row] = wait_for_rows(proxy.workdir / "sluice.db", 1)
    assert_tokens(row, CLAUDE_USAGE)
    assert proxy.stop() == 0


def test_bad_config_stops_start_up_naming_file_field_and_reason(
    fake: FakeProvider, start_proxy: StartProxy, tmp_path: Path
) -> None:
    workdir = tmp_path / "bad-config"
    log = start_up_failure(start_proxy, workdir, config_toml='[rules]\ncache_control_max = "x"\n')

    # One block: the file, then the field and the reason; no traceback, and the proxy never listened.
    assert f"sluice: cannot start:\n  file: {workdir / 'sluice.toml'}\n  rules.cache_control_max: " in log
    problem = next(line for line in log.splitlines() if "cache_control_max" in line)
    assert "valid integer" in problem  # the reason
    assert "Traceback" not in log and "listening" not in log
    assert fake.requests == []


def test_bad_database_path_stops_start_up(
    fake: FakeProvider, start_proxy: StartProxy, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where a directory should be\n")
    db_path = blocker / "sub" / "sluice.db"
    log = start_up_failure(
        start_proxy, tmp_path / "bad-db", set_db=False, extra_args=_shared_db_args(db_path)
    )

    problem = next(line for line in log.splitlines() if str(db_path) in line)
    assert "sluice_db" in problem
    assert "Not a directory" in problem


# 13. mitmweb.


def _web_get(proxy: Proxy, path: str) -> bytes:
    with urllib.request.urlopen(f"{proxy.web_url}{path}?token={proxy.web_token}", timeout=5) as response:
        return response.read()


def test_mitmweb_shows_the_summary_and_the_streamed_body(fake: FakeProvider, start_proxy: StartProxy) -> None:
    proxy = start_proxy(program="mitmweb")
    fake.next(usage=CLAUDE_USAGE, text="shown in the web ui")
    with anthropic_client(proxy) as client, client.messages.stream(**MESSAGE) as stream:
        assert stream.get_final_text() == "shown in the web ui"

    [row] = proxy.wait_for_rows(1)
    flows = [f for f in json.loads(_web_get(proxy, "/flows")) if f["request"]["path"] == "/v1/messages"]
    [flow] = flows
    comment = flow["comment"]
    assert MODEL in comment
    assert f"in {CLAUDE_USAGE.input_tokens}" in comment
    assert f"out {CLAUDE_USAGE.output_tokens}" in comment
    assert f"${row['cost_usd']:.4f}" in comment
    body = _web_get(proxy, f"/flows/{flow['id']}/response/content.data")
    assert body == fake.requests[0].response.body
    assert b"shown" in body
    assert [kind for kind, _ in sse_records(body)][-1] == "message_stop"


# 14. The `sluice` reports over real traffic.


def _sluice(*args: str) -> Any:
    command = [str(Path(sys.executable).parent / "sluice"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_sluice_usage_and_quota_report_real_traffic(fake: FakeProvider, start_proxy: StartProxy) -> None:
    proxy = start_proxy()
    second = Usage(input_tokens=11, cache_read_tokens=900, cache_write_1h_tokens=64, output_tokens=33)
    fake.next(path="/v1/messages/count_tokens", usage=Usage(input_tokens=5000))
    fake.next(path="/v1/messages", usage=CLAUDE_USAGE)
    fake.next(path="/v1/messages", usage=second)
    fake.next(path="/v1/chat/completions", usage=GPT_USAGE)
    with anthropic_client(proxy) as claude, openai_client(proxy) as gpt:
        claude.messages.count_tokens(model=MODEL, messages=MESSAGE["messages"])
        claude.messages.create(**MESSAGE)
        with claude.messages.stream(**MESSAGE) as stream:
            stream.get_final_message()
        gpt.chat.completions.create(**CHAT)
    found = proxy.wait_for_rows(4)
    assert proxy.stop() == 0
    db = str(proxy.db_path)

    usage = {entry["model"]: entry for entry in _sluice("usage", "--db", db, "--json", "--by", "model")}
    claude = usage[MODEL]
    assert {
        name: claude[name]
        for name in (
            "input_tokens",
            "cache_read_tokens",
            "cache_write_5m_tokens",
            "cache_write_1h_tokens",
            "output_tokens",
        )
    } == {
        "input_tokens": CLAUDE_USAGE.input_tokens + second.input_tokens,  # the count is not billed input
        "cache_read_tokens": CLAUDE_USAGE.cache_read_tokens + second.cache_read_tokens,
        "cache_write_5m_tokens": CLAUDE_USAGE.cache_write_5m_tokens,
        "cache_write_1h_tokens": CLAUDE_USAGE.cache_write_1h_tokens + second.cache_write_1h_tokens,
        "output_tokens": CLAUDE_USAGE.output_tokens + second.output_tokens,
    }
    gpt_usage = usage[CHAT["model"]]
    assert (gpt_usage["calls"], gpt_usage["input_tokens"], gpt_usage["cache_read_tokens"]) == (1, 40, 60)
    assert (gpt_usage["output_tokens"], gpt_usage["reasoning_tokens"]) == (25, 12)
    assert claude["cost_usd"] + gpt_usage["cost_usd"] == pytest.approx(
        sum(row["cost_usd"] for row in found), abs=1e-6
    )
    assert claude["unpriced_calls"] == gpt_usage["unpriced_calls"] == 0
    by_day = _sluice("usage", "--db", db, "--json")
    assert sum(entry["output_tokens"] for entry in by_day) == (
        CLAUDE_USAGE.output_tokens + second.output_tokens + GPT_USAGE.output_tokens
    )

    quotas = {(q["host"], q["credential"]): q for q in _sluice("quota", "--db", db, "--json")}
    claude_row = next(row for row in found if row["provider"] == "anthropic")
    gpt_row = next(row for row in found if row["provider"] == "openai")
    last_claude = [r for r in fake.requests if r.header("host") == "api.anthropic.com"][-1]
    last_gpt = [r for r in fake.requests if r.header("host") == "api.openai.com"][-1]
    sent = rate_limit_headers(last_claude)
    anthropic_quota = quotas[("api.anthropic.com", claude_row["credential"])]
    requests_limit = next(limit for limit in anthropic_quota["limits"] if limit["name"] == "requests")
    assert requests_limit["limit"] == int(sent["anthropic-ratelimit-requests-limit"])
    assert requests_limit["remaining"] == int(sent["anthropic-ratelimit-requests-remaining"])
    unified = anthropic_quota["unified"]
    assert unified["status"] == sent["anthropic-ratelimit-unified-status"]
    five_hours = next(window for window in unified["windows"] if window["name"] == "5h")
    assert five_hours["utilization"] == pytest.approx(
        float(sent["anthropic-ratelimit-unified-5h-utilization"])
    )
    openai_quota = quotas[("api.openai.com", gpt_row["credential"])]
    sent_gpt = rate_limit_headers(last_gpt)
    gpt_requests = next(limit for limit in openai_quota["limits"] if limit["name"] == "requests")
    assert gpt_requests["remaining"] == int(sent_gpt["x-ratelimit-remaining-requests"])
    assert gpt_requests["limit"] == int(sent_gpt["x-ratelimit-limit-requests"])
    assert_timings(claude_row)


def test_a_misspelt_sluice_option_stops_start_up_naming_it(
    fake: FakeProvider, start_proxy: StartProxy, tmp_path: Path
) -> None:
    # mitmproxy itself keeps an unknown `--set` aside without a word: this would start record-only.
    workdir = tmp_path / "misspelt-option"
    log = start_up_failure(start_proxy, workdir, extra_args=["--set", "sluice_conifg=team.toml"])
    expected = '--set sluice_conifg: unknown option (did you mean "sluice_config"?)'
    assert f"sluice: cannot start:\n  {expected}" in log
    assert "Traceback" not in log and "listening" not in log
    assert fake.requests == []
