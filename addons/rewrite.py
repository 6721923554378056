"""Applies the operator's request rules (rules/rewrite.py) to the JSON body of each metered call.

Fails open: a body the rules cannot read (not JSON, compressed, malformed) goes upstream byte for byte and
the call's row says why nothing was applied. A body no rule changes is never re-serialized.
"""

from __future__ import annotations

from mitmproxy import http

from addons.core import SluiceCore
from addons.meter import call_for
from rules.rewrite import RuleContext, apply_request_rules, should_strip_billing_block


class Rewrite:
    def __init__(self, core: SluiceCore) -> None:
        self.core = core

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live:
            return
        call = call_for(self.core, flow)
        if call is None:
            return
        upstream = self.core.upstream_for(call.host)
        result = apply_request_rules(
            flow.request.raw_content or b"",
            RuleContext(
                provider=call.provider,
                api=call.api,
                host=call.host,
                rules=self.core.config.rules,
                client=call.client,
                user_id=call.user_id,
                strip_billing_block=should_strip_billing_block(
                    call.host, upstream.strip_billing_header if upstream else None
                ),
                content_encoding=flow.request.headers.get("content-encoding"),
            ),
        )
        call.request_read = result.note is None
        call.request_model = result.model
        call.stream = result.stream
        call.client_asked_usage = result.client_asked_usage
        call.rules_applied.extend(result.applied)
        if result.note:
            call.notes.append(result.note)
        if result.body is not None:
            flow.request.content = result.body  # also sets Content-Length
            if not result.client_asked_usage:
                # The usage-only chunk is cut out of the stream before the client sees it; that needs
                # the SSE bytes in the clear.
                flow.request.headers["accept-encoding"] = "identity"
