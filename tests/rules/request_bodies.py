"""Request bodies and rule contexts shared by the request-rule tests (generic and per provider)."""

from __future__ import annotations

import json
from typing import Any

from rules.config import Rules, SystemBlock
from rules.providers import wire_format
from rules.rewrite import RuleContext

BILLING = {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.0.1; cc_entrypoint=cli"}
POLICY = SystemBlock(name="policy", text="Follow the company policy.")
IDENTITY = SystemBlock(name="identity", text="You work for ACME.", cache="1h")


def anthropic_body(**fields: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    } | fields


def ctx(api: str = "messages", **fields: Any) -> RuleContext:
    """A call of wire format `api` (by its name), to Anthropic's host unless `host` says otherwise."""
    fields.setdefault("rules", Rules())
    return RuleContext(wire=wire_format(api), host=fields.pop("host", "api.anthropic.com"), **fields)


def raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
