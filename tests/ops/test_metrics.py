"""Metrics: what one finished call adds, and the gauges a snapshot shows."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path
from typing import Any

from ops.messages import Backlog, Finished, Status
from ops.metrics import MAX_MODELS, Metrics
from rules.ops import OTHER
from state.budgets import ClientBudget
from state.ops import LimitLevel, Snapshot, WindowLevel
from state.pool import CredentialState

ROW: dict[str, Any] = {
    "provider": "anthropic",
    "model": "claude-haiku-4-5",
    "client": "alice",
    "status": 200,
    "error": None,
    "input_tokens": 11,
    "cache_read_tokens": 100,
    "output_tokens": 7,
    "cost_usd": 0.25,
    "duration_ms": 1500.0,
    "ttft_ms": 300.0,
}


def call(**changes: Any) -> Finished:
    return Finished({**ROW, **changes}, None, None, None, None, 0.0, None)


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_call_adds_to_calls_tokens_cost_and_the_histograms() -> None:
    metrics = Metrics(Status())
    metrics.on_call(call())
    metrics.on_call(call(status=529, error="overloaded_error: busy", output_tokens=None, cost_usd=None))
    calls = {"provider": "anthropic", "model": "claude-haiku-4-5", "client": "alice"}
    assert value(metrics, "sluice_calls_total", **calls, status_class="2xx") == 1
    assert value(metrics, "sluice_calls_total", **calls, status_class="5xx") == 1
    assert value(metrics, "sluice_errors_total", **calls, status_class="5xx") == 1
    assert value(metrics, "sluice_errors_total", **calls, status_class="2xx") is None
    assert value(metrics, "sluice_tokens_total", **calls, kind="input") == 22
    assert value(metrics, "sluice_tokens_total", **calls, kind="output") == 7
    assert value(metrics, "sluice_cost_usd_total", **calls) == 0.25
    assert value(metrics, "sluice_call_duration_seconds_bucket", **calls, le="2.0") == 2
    assert value(metrics, "sluice_time_to_first_token_seconds_sum", **calls) == 0.6


def test_a_client_without_a_name_and_a_call_without_an_answer() -> None:
    metrics = Metrics(Status())
    metrics.on_call(call(client=None, status=None, error="connection lost: reset"))
    labels = {"provider": "anthropic", "model": "claude-haiku-4-5", "client": "none", "status_class": "none"}
    assert value(metrics, "sluice_errors_total", **labels) == 1


def test_invented_models_cost_one_series() -> None:
    metrics = Metrics(Status())
    for index in range(MAX_MODELS + 50):
        metrics.on_call(call(model=f"invented-{index}"))
    assert (
        value(
            metrics,
            "sluice_calls_total",
            provider="anthropic",
            model=OTHER,
            client="alice",
            status_class="2xx",
        )
        == 50
    )


def test_gauges_come_from_the_latest_snapshot() -> None:
    metrics = Metrics(Status())
    now = 1e10  # far future: the cooldown below is still running whatever the clock says
    snapshot = Snapshot(
        at=now,
        credentials=(
            CredentialState(
                "api.anthropic.com", "keys[0] env:K1", "sha256:a", "key", 0, "cooling", "429", now, now
            ),
            CredentialState(
                "api.anthropic.com",
                "keys[1] env:K2",
                "sha256:b",
                "key",
                1,
                "disabled",
                "401",
                None,
                now,
                quota_status="allowed",
                headroom=0.62,
            ),
        ),
        windows=(WindowLevel("api.anthropic.com", "keys[0] env:K1", "5h", 0.42, "allowed", None),),
        limits=(LimitLevel("api.openai.com", "sha256:c", "openai:tokens", 900, 1000),),
        budgets=(ClientBudget("alice", 20.0, "day", 5.5, 1.0, None),),
    )
    metrics.on_snapshot(snapshot, Backlog(0, 0))
    pool = {"host": "api.anthropic.com", "credential": "keys[1] env:K2"}
    assert value(metrics, "sluice_credential_state", **pool, state="disabled") == 1
    assert value(metrics, "sluice_credential_state", **pool, state="active") == 0
    cooldown = value(
        metrics, "sluice_credential_cooldown_seconds", host="api.anthropic.com", credential="keys[0] env:K1"
    )
    assert cooldown is not None and cooldown > 0
    assert value(metrics, "sluice_credential_headroom_ratio", **pool) == 0.62
    headroomless = {"host": "api.anthropic.com", "credential": "keys[0] env:K1"}
    assert value(metrics, "sluice_credential_headroom_ratio", **headroomless) is None
    assert (
        value(
            metrics,
            "sluice_ratelimit_utilization",
            host="api.anthropic.com",
            credential="keys[0] env:K1",
            window="5h",
        )
        == 0.42
    )
    limit = {"host": "api.openai.com", "credential": "sha256:c", "limit": "openai:tokens"}
    assert (
        value(metrics, "sluice_ratelimit_remaining", **limit),
        value(metrics, "sluice_ratelimit_limit", **limit),
    ) == (900, 1000)
    assert value(metrics, "sluice_budget_spent_usd", client="alice", period="day") == 5.5
    assert value(metrics, "sluice_budget_limit_usd", client="alice", period="day") == 20
    assert value(metrics, "sluice_writer_rows_in_memory") == 0


def test_scrapes_are_answered_on_the_socket_the_proxy_bound_with_its_figures() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    status = Status(backlog=Backlog(queued=3, held=2), dropped=7, polls=4)
    metrics = Metrics(status)
    metrics.serve(listener)
    try:
        metrics.on_call(call())
        port = listener.getsockname()[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        metrics.close()
    assert "sluice_writer_queue_depth 3.0" in text and "sluice_writer_rows_in_memory 2.0" in text
    assert "sluice_ops_dropped_total 7.0" in text and "sluice_ops_polls_total 4.0" in text
    assert 'sluice_calls_total{client="alice"' in text


def test_the_grafana_dashboard_uses_only_series_sluice_exposes() -> None:
    metrics = Metrics(Status())
    metrics.on_call(call(status=500, error="api_error: boom"))
    now = 1e10
    metrics.on_snapshot(
        Snapshot(
            at=now,
            credentials=(CredentialState("h", "k", "sha256:a", "oauth", 0, "cooling", "429", now, now),),
            oauth_expires_at=(("h", now),),
            windows=(WindowLevel("h", "k", "5h", 0.5, "allowed", None),),
            limits=(LimitLevel("h", "k", "anthropic:requests", 1, 2),),
            budgets=(ClientBudget("alice", 20.0, "day", 1.0, 0.0, None),),
        ),
        Backlog(0, 0),
    )
    exposed = {sample.name for family in metrics.registry.collect() for sample in family.samples}
    dashboard = json.loads((Path(__file__).parents[2] / "dashboards" / "sluice-grafana.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"\bsluice_[a-z0-9_]+", target["expr"])
    }
    assert len(used) >= 12
    assert used <= exposed, f"not exposed: {sorted(used - exposed)}"
