import json
from datetime import UTC, datetime, timedelta

import pytest

from rules.providers import provider
from rules.providers.anthropic import limit_headers


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
        (529, "overloaded_error"),
    ],
)
def test_anthropic_envelope(status, kind):
    assert json.loads(provider("anthropic").error_body(status, "nope", None)) == {
        "type": "error",
        "error": {"type": kind, "message": "nope"},
    }


def test_openai_envelope():
    assert json.loads(provider("openai").error_body(401, "bad key", None)) == {
        "error": {
            "message": "bad key",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


@pytest.mark.parametrize(("name", "start"), [("anthropic", b"event: error\ndata: {"), ("openai", b"data: {")])
def test_sse_error_event_is_one_record(name, start):
    record = provider(name).sse_error_event(504, "idle")
    assert record.startswith(start) and record.endswith(b"}\n\n") and record.count(b"\n\n") == 1


@pytest.mark.parametrize(("status", "kind"), [(404, "not_found_error"), (413, "request_too_large")])
def test_anthropic_names_its_own_error_types(status, kind):
    assert json.loads(provider("anthropic").error_body(status, "x", None))["error"]["type"] == kind


def test_a_code_given_wins_over_the_statuss_own():
    body = json.loads(provider("openai").error_body(429, "slow down", "insufficient_quota"))
    assert body["error"]["code"] == "insufficient_quota"


@pytest.mark.parametrize("wait", [0.2, 12.5, 59.999])
def test_sluices_own_anthropic_reset_is_never_before_the_limit_has_room(wait: float) -> None:
    before = datetime.now(UTC)
    headers = limit_headers("rpm", 60, 0, wait)
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"])
    assert headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    # Written in whole seconds, rounded up: an SDK that waits until the reset finds the room there.
    assert reset >= before + timedelta(seconds=wait) and reset.microsecond == 0
    assert reset <= datetime.now(UTC) + timedelta(seconds=wait + 1)
