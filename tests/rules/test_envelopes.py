import json

import pytest

from rules.envelopes import error_body, sse_error_event


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, "authentication_error"), (429, "rate_limit_error"), (503, "api_error"), (529, "overloaded_error")],
)
def test_anthropic_envelope(status, kind):
    assert json.loads(error_body("anthropic", status, "nope")) == {
        "type": "error",
        "error": {"type": kind, "message": "nope"},
    }


def test_openai_envelope():
    assert json.loads(error_body("openai", 401, "bad key")) == {
        "error": {
            "message": "bad key",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_sse_error_event_is_one_record():
    record = sse_error_event("anthropic", 504, "idle")
    assert record.startswith(b"event: error\ndata: {") and record.endswith(b"}\n\n")
