"""Operations end to end (issue #18): a real mitmdump with sluice, real clients, the fake provider behind it,
and on loopback what the ops ecosystem would run: a Prometheus scrape, an OTLP/HTTP collector, webhooks.

Everything is checked where it lands: `/metrics` parsed by prometheus_client's own parser against the
database's sums; spans decoded by opentelemetry-proto; alert bodies as the webhook received them.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from bench.ops_sink import PostSink
from tests.e2e.conftest import ProxyFactory
from tests.e2e.harness import Proxy, anthropic_client, free_port, openai_client
from tests.fake_provider import FakeProvider, Usage

pytestmark = pytest.mark.e2e

ALICE_KEY = "sluice-client-alice-0ps0ps0ps0ps"
BOB_KEY = "sluice-client-bob-0ps0ps0ps0ps1"
ANT_KEY_1 = "sk-ant-api03-REAL-OPS-FIRST-KEY-1a2b3c4d5e6f7a8b"
ANT_KEY_2 = "sk-ant-api03-REAL-OPS-SECOND-KEY-9f8e7d6c5b4a3f2e"
OAI_KEY = "sk-proj-REAL-OPS-OPENAI-KEY-0a9b8c7d6e5f4a3b"
REAL_KEYS = (ANT_KEY_1, ANT_KEY_2, OAI_KEY)
ENV = {
    "SLUICE_OPS_ALICE": ALICE_KEY,
    "SLUICE_OPS_BOB": BOB_KEY,
    "SLUICE_OPS_ANT_1": ANT_KEY_1,
    "SLUICE_OPS_ANT_2": ANT_KEY_2,
    "SLUICE_OPS_OAI": OAI_KEY,
}
LABEL_1 = "keys[0] env:SLUICE_OPS_ANT_1"
LABEL_2 = "keys[1] env:SLUICE_OPS_ANT_2"
CONFIG = """
[[clients]]
name = "alice"
key = "env:SLUICE_OPS_ALICE"
budget = { usd = 50, period = "day" }

[[clients]]
name = "bob"
key = "env:SLUICE_OPS_BOB"

[[upstreams]]
host = "api.anthropic.com"
provider = "anthropic"
keys = ["env:SLUICE_OPS_ANT_1", "env:SLUICE_OPS_ANT_2"]

[[upstreams]]
host = "api.openai.com"
provider = "openai"
keys = ["env:SLUICE_OPS_OAI"]
"""
MODEL = "claude-haiku-4-5"
MESSAGE: dict[str, Any] = {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
POLL_MS = "100"
DEADLINE_S = 20.0


# Loopback receivers.


@pytest.fixture
def receiver() -> Iterator[PostSink]:
    """A loopback HTTP server keeping every POST body: the OTLP collector and the webhooks."""
    server = PostSink(keep=True)
    yield server
    server.stop()


def wait_for[T](probe: Callable[[], T | None], what: str, timeout: float = DEADLINE_S) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what}: not seen within {timeout}s")


# Prometheus.


def scrape(port: int) -> dict[str, list[Any]]:
    """`/metrics`, parsed by prometheus_client's own parser: samples by sample name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def total(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def db_query(db_path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def scrape_until(port: int, ready: Callable[[dict[str, list[Any]]], bool], what: str) -> dict[str, list[Any]]:
    return wait_for(lambda: samples if ready(samples := scrape(port)) else None, what)


def metrics_proxy(start_proxy: ProxyFactory, *extra: str) -> tuple[Proxy, int]:
    port = free_port()
    args = ["--set", f"sluice_metrics=127.0.0.1:{port}", "--set", f"sluice_ops_poll_ms={POLL_MS}", *extra]
    proxy = start_proxy(config_toml=CONFIG, env=ENV, extra_args=args)
    proxy.wait_for_log(f"127.0.0.1:{port}/metrics")
    return proxy, port


def polls_after(port: int, count: int) -> None:
    """Wait until the ops process has read the shared state `count` more times than now."""
    start = total(scrape(port), "sluice_ops_polls_total")
    wait_for(lambda: total(scrape(port), "sluice_ops_polls_total") >= start + count, f"{count} more polls")


def test_metrics_equal_the_databases_sums(fake: FakeProvider, start_proxy: ProxyFactory) -> None:
    proxy, port = metrics_proxy(start_proxy)
    fake.next(usage=Usage(input_tokens=11, output_tokens=7, cache_read_tokens=100, cache_write_5m_tokens=20))
    fake.next(usage=Usage(input_tokens=5, output_tokens=3))
    fake.next(status=500)
    with anthropic_client(proxy, ALICE_KEY) as client:
        client.messages.create(**MESSAGE)
        with client.messages.stream(**MESSAGE) as stream:
            stream.until_done()
        with pytest.raises(Exception, match="500"):
            client.messages.create(**MESSAGE)
    with openai_client(proxy, BOB_KEY) as client:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    rows = proxy.wait_for_rows(4)

    samples = scrape_until(port, lambda s: total(s, "sluice_calls_total") == len(rows), "every call counted")

    sums = db_query(
        proxy.db_path,
        "select provider, model, client, count(*), sum(input_tokens), sum(cache_read_tokens),"
        " sum(cache_write_5m_tokens), sum(output_tokens), sum(cost_usd),"
        " sum(error is not null or status >= 400 or status is null), count(duration_ms)"
        " from calls group by provider, model, client",
    )
    assert len(sums) == 2
    for provider, model, client, calls, inputs, reads, writes, outputs, cost, errors, timed in sums:
        labels = {"provider": provider, "model": model, "client": client}
        assert total(samples, "sluice_calls_total", **labels) == calls
        assert total(samples, "sluice_tokens_total", **labels, kind="input") == inputs
        assert total(samples, "sluice_tokens_total", **labels, kind="cache_read") == (reads or 0)
        assert total(samples, "sluice_tokens_total", **labels, kind="cache_write_5m") == (writes or 0)
        assert total(samples, "sluice_tokens_total", **labels, kind="output") == outputs
        assert total(samples, "sluice_cost_usd_total", **labels) == pytest.approx(cost, rel=1e-9)
        assert total(samples, "sluice_errors_total", **labels) == errors
        assert total(samples, "sluice_call_duration_seconds_count", **labels) == timed
    assert total(samples, "sluice_errors_total", client="alice", status_class="5xx") == 1
    assert total(samples, "sluice_calls_total", client="alice", status_class="2xx") == 2
    assert total(samples, "sluice_time_to_first_token_seconds_count", client="alice") >= 1

    # Gauges from the shared state: the pool, the quota the provider last reported, the budget, the writer.
    # Every row is written (above): the database's latest value is final; a snapshot taken while the rows were
    # still arriving may show an earlier one, so wait for the poll that sees it.
    [latest_5h] = db_query(
        proxy.db_path,
        "select value from rate_limits where credential = 'keys[0] env:SLUICE_OPS_ANT_1'"
        " and header = 'anthropic-ratelimit-unified-5h-utilization'",
    )
    [[spent]] = db_query(
        proxy.db_path, "select coalesce(sum(amount_usd), 0) from budget_holds where state = 'settled'"
    )

    def at_latest(samples: dict[str, list[Any]]) -> bool:
        utilization = total(samples, "sluice_ratelimit_utilization", credential=LABEL_1, window="5h")
        budget = total(samples, "sluice_budget_spent_usd", client="alice")
        return utilization == float(latest_5h[0]) and budget == pytest.approx(spent)

    samples = scrape_until(port, at_latest, "the gauges at the latest reading")
    assert total(samples, "sluice_credential_state", credential=LABEL_1, state="active") == 1
    assert total(samples, "sluice_credential_state", credential=LABEL_2, state="disabled") == 0
    assert total(samples, "sluice_ratelimit_remaining", credential=LABEL_1, limit="anthropic:requests") > 0
    assert total(samples, "sluice_budget_limit_usd", client="alice", period="day") == 50
    assert "sluice_writer_queue_depth" in samples and "sluice_writer_rows_in_memory" in samples
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert not any(key in text for key in (*REAL_KEYS, ALICE_KEY, BOB_KEY))


def test_invented_model_names_fold_into_other(fake: FakeProvider, start_proxy: ProxyFactory) -> None:
    proxy, port = metrics_proxy(start_proxy)
    # The fake answers with the model the request named: 70 names, more than the 64 kept.
    with anthropic_client(proxy, BOB_KEY) as client:  # bob has no budget: unknown models are his to call
        for index in range(70):
            client.messages.create(**{**MESSAGE, "model": f"invented-{index}"})
    proxy.wait_for_rows(70, timeout=30)

    samples = scrape_until(port, lambda s: total(s, "sluice_calls_total") == 70, "every call counted")

    models = {s.labels["model"] for s in samples["sluice_calls_total"]}
    assert len(models) == 65  # 64 kept, the rest in one series
    assert total(samples, "sluice_calls_total", model="other") == 6


# OpenTelemetry.


def spans_received(receiver: PostSink) -> list[tuple[Any, dict[str, Any]]]:
    """Every span the collector got, with its attributes decoded."""
    spans = []
    for body in receiver.posted("/v1/traces"):
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append((span, {a.key: _value(a.value) for a in span.attributes}))
    return spans


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind)


def test_one_genai_span_per_call_continuing_the_clients_trace(
    fake: FakeProvider, start_proxy: ProxyFactory, receiver: PostSink
) -> None:
    proxy = start_proxy(config_toml=CONFIG, env=ENV, extra_args=["--set", f"sluice_otlp={receiver.url}"])
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    fake.next(usage=Usage(input_tokens=11, output_tokens=7, cache_read_tokens=100, cache_write_5m_tokens=20))
    fake.next(status=400)
    with anthropic_client(proxy, ALICE_KEY) as client:
        client.messages.create(**MESSAGE, extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"})
        with pytest.raises(Exception, match="400"):
            client.messages.create(**MESSAGE)
    rows = proxy.wait_for_rows(2)

    spans = wait_for(lambda: found if len(found := spans_received(receiver)) >= 2 else None, "two spans")

    assert len(spans) == 2
    (ok, attrs), (failed, failed_attrs) = sorted(spans, key=lambda s: s[0].start_time_unix_nano)
    assert ok.name == f"chat {MODEL}"
    assert ok.kind == 3  # SPAN_KIND_CLIENT
    assert (ok.trace_id.hex(), ok.parent_span_id.hex()) == (trace_id, parent_id)
    assert failed.trace_id.hex() != trace_id and not failed.parent_span_id  # no traceparent: a new trace
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.response.model"] == rows[0]["model"]
    assert (
        attrs["gen_ai.usage.input_tokens"] == 11 + 100 + 20
    )  # cached input included, as the conventions say
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 100
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 20
    assert attrs["gen_ai.usage.output_tokens"] == 7
    assert attrs["gen_ai.response.finish_reasons"] == [rows[0]["stop_reason"]]
    assert attrs["server.address"] == "api.anthropic.com"
    assert attrs["sluice.client"] == "alice"
    assert "error.type" not in attrs
    assert (ok.end_time_unix_nano - ok.start_time_unix_nano) / 1e6 == pytest.approx(
        rows[0]["duration_ms"], abs=0.01
    )
    assert failed_attrs["error.type"] == "400"
    assert failed.status.code == 2  # STATUS_CODE_ERROR
    assert not any(name.startswith("gen_ai.input") for name in attrs)  # no content unless opted in
    everything = b"".join(receiver.posted("/v1/traces"))
    assert not any(key.encode() in everything for key in (*REAL_KEYS, ALICE_KEY))


def test_content_goes_on_the_span_only_when_opted_in(
    fake: FakeProvider, start_proxy: ProxyFactory, receiver: PostSink
) -> None:
    args = ["--set", f"sluice_otlp={receiver.url}", "--set", "sluice_otlp_content=true"]
    proxy = start_proxy(config_toml=CONFIG, env=ENV, extra_args=args)
    with anthropic_client(proxy, ALICE_KEY) as client:
        client.messages.create(**MESSAGE)

    [(_, attrs)] = wait_for(lambda: spans_received(receiver), "the span")

    assert json.loads(attrs["gen_ai.input.messages"]) == MESSAGE["messages"]


def test_a_collector_that_is_down_costs_a_warning_not_a_call(
    fake: FakeProvider, start_proxy: ProxyFactory
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    proxy = start_proxy(config_toml=CONFIG, env=ENV, extra_args=["--set", f"sluice_otlp={closed}"])
    with anthropic_client(proxy, ALICE_KEY) as client:
        for _ in range(3):
            assert client.messages.create(**MESSAGE).content
    rows = proxy.wait_for_rows(3)

    assert all(row["status"] == 200 for row in rows)
    proxy.wait_for_log(
        "exporting spans batch", timeout=DEADLINE_S
    )  # the SDK's warning: retrying, or given up
    assert not proxy.tracebacks()


# Alerts.


def alerts_config(receiver: PostSink, down_port: int) -> str:
    return (
        CONFIG
        + f"""
[[alerts]]
url = "{receiver.url}/hook"
events = ["credential_disabled", "credential_recovered", "quota_threshold", "window_rejected"]
quota_threshold = 0.8

[[alerts]]
url = "{receiver.url}/slack"
format = "slack"
events = ["quota_threshold"]
quota_threshold = 0.8

[[alerts]]
url = "http://127.0.0.1:{down_port}/never"
events = ["quota_threshold"]
retries = 1
timeout_s = {HANGING_TIMEOUT_S}
"""
    )


HANGING_TIMEOUT_S = 2


def alert_rows(db_path: Path) -> list[tuple[Any, ...]]:
    return db_query(db_path, "select event, subject, webhook, state, attempts from alerts order by at, event")


def _settled(rows: list[tuple[Any, ...]], count: int) -> bool:
    return len(rows) == count and all(row[3] != "pending" for row in rows)


def test_one_alert_per_crossing_when_a_key_is_disabled_and_a_quota_crosses_its_threshold(
    fake: FakeProvider, start_proxy: ProxyFactory, receiver: PostSink
) -> None:
    # A webhook that accepts the connection and never answers: each attempt waits out its timeout.
    hanging = socket.create_server(("127.0.0.1", 0), backlog=16)
    down_port = hanging.getsockname()[1]
    port = free_port()
    args = ["--set", f"sluice_metrics=127.0.0.1:{port}", "--set", f"sluice_ops_poll_ms={POLL_MS}"]
    proxy = start_proxy(config_toml=alerts_config(receiver, down_port), env=ENV, extra_args=args)
    proxy.wait_for_log("/metrics")
    fake.accepted_credentials = {ANT_KEY_2}
    high = [("anthropic-ratelimit-unified-5h-utilization", "0.85")]
    with anthropic_client(proxy, ALICE_KEY, max_retries=1) as client:
        client.messages.create(**MESSAGE)  # key 1: 401, disabled; the SDK's retry lands on key 2
        polls_after(port, 3)  # the disabled key is seen, and seen again: still one alert
        fake.next(headers=high)
        client.messages.create(**MESSAGE)  # key 2's 5h window at 85 %
        polls_after(port, 3)
        fake.next(headers=[("anthropic-ratelimit-unified-5h-utilization", "0.9")])
        client.messages.create(**MESSAGE)  # still above: the same crossing
        client.messages.create(**MESSAGE)  # while the hanging webhook is still being tried
    polls_after(port, 3)

    hooks = wait_for(lambda: found if len(found := receiver.posted("/hook")) >= 2 else None, "two alerts")
    bodies = [json.loads(body) for body in hooks]
    assert [(b["event"], b["subject"]) for b in bodies] == [
        ("credential_disabled", f"api.anthropic.com {LABEL_1}"),
        ("quota_threshold", f"api.anthropic.com {LABEL_2} 5h"),
    ]
    assert "401" in bodies[0]["details"]["reason"]
    assert bodies[1]["details"]["utilization"] == 0.85
    assert bodies[1]["source"] == "sluice"
    [slack] = receiver.posted("/slack")
    assert "5h window" in json.loads(slack)["text"] and "85%" in json.loads(slack)["text"]
    # Every alert is recorded; the webhook that hangs is recorded as failed, after its retry.
    recorded = wait_for(
        lambda: found if _settled(found := alert_rows(proxy.db_path), 4) else None,
        "four alerts recorded and settled",
    )
    states = sorted((event, state, attempts) for event, _, webhook, state, attempts in recorded)
    assert states == [
        ("credential_disabled", "delivered", 1),
        ("quota_threshold", "delivered", 1),
        ("quota_threshold", "delivered", 1),
        ("quota_threshold", "failed", 2),
    ]
    hanging.close()
    assert not any(str(down_port) in str(row) for row in recorded)  # webhooks named by host + fingerprint
    # The webhook that hangs never slowed a call: none waited out even one of its attempts.
    durations = [row["duration_ms"] for row in proxy.rows()]
    assert len(durations) == 5 and max(durations) < HANGING_TIMEOUT_S * 1000
    everything = b"".join(body for _, body in receiver.bodies) + proxy.log_text().encode()
    assert not any(key.encode() in everything for key in REAL_KEYS)
    assert f"{down_port}/never" not in proxy.log_text()


def test_a_recovered_key_is_alerted_once(
    fake: FakeProvider, start_proxy: ProxyFactory, receiver: PostSink
) -> None:
    port = free_port()
    args = ["--set", f"sluice_metrics=127.0.0.1:{port}", "--set", f"sluice_ops_poll_ms={POLL_MS}"]
    proxy = start_proxy(config_toml=alerts_config(receiver, free_port()), env=ENV, extra_args=args)
    proxy.wait_for_log("/metrics")
    fake.accepted_credentials = {ANT_KEY_2}
    with anthropic_client(proxy, ALICE_KEY, max_retries=1) as client:
        client.messages.create(**MESSAGE)
    wait_for(lambda: receiver.posted("/hook"), "the disabled alert")

    from tests.e2e.harness import mitmdump_path

    sluice = mitmdump_path("sluice")
    import subprocess

    subprocess.run(
        [str(sluice), "credentials", "--db", str(proxy.db_path), "--reset", "api.anthropic.com", LABEL_1],
        check=True,
        capture_output=True,
    )
    wait_for(lambda: len(receiver.posted("/hook")) >= 2, "the recovered alert")
    polls_after(port, 3)

    events = [json.loads(body)["event"] for body in receiver.posted("/hook")]
    assert events == ["credential_disabled", "credential_recovered"]
