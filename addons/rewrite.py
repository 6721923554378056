"""Applies the operator's request rules (rules/rewrite.py) to the JSON body of each metered call.

Fails open: a body the rules cannot read (not JSON, compressed, malformed) goes upstream byte for byte and
the call's row says why nothing was applied. A body no rule changes is never re-serialized.
"""

from __future__ import annotations

import asyncio

from mitmproxy import http

from addons.core import SluiceCore, destination
from addons.decoding import OFF_LOOP_BYTES, decode_max
from addons.fields import with_headers
from rules.providers import wire_format
from rules.rewrite import MemberMemo, RuleContext, apply_request_rules, should_strip_billing_block


class Rewrite:
    def __init__(self, core: SluiceCore) -> None:
        self.core = core
        self.members = MemberMemo()

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live:
            return
        call = self.core.calls.get(flow.id)
        if call is None:
            return
        host = destination(flow).host
        upstream = self.core.upstream_for(host)
        raw = flow.request.raw_content or b""
        if len(raw) > decode_max():
            # Parsed, a JSON body takes several times its size in memory: past the cap it goes as it came
            # (the meter, held to the same cap, says so on the row).
            return
        wire = wire_format(call.api)
        context = RuleContext(
            wire=wire,
            host=host,
            rules=self.core.config.rules,
            client=call.client,
            user_id=call.user_id,
            strip_billing_block=should_strip_billing_block(
                wire, host, upstream.strip_billing_header if upstream else None
            ),
            content_encoding=call.request_headers.get("content-encoding"),
            memo=self.members,
        )
        if len(raw) >= OFF_LOOP_BYTES:
            result = await asyncio.to_thread(apply_request_rules, raw, context)  # pure: safe on a thread
        else:
            result = apply_request_rules(raw, context)
        call.request_read = result.note is None
        call.request_json_before = result.parsed
        call.request_json = result.rewritten
        call.request_model = result.model or call.request_model  # Gemini names it in the path
        call.stream = result.stream
        call.client_asked_usage = result.client_asked_usage
        call.rules_applied.extend(result.applied)
        if result.note:
            call.notes.append(result.note)
        if result.body is not None:
            # The rules read only bodies without a Content-Encoding: the new bytes go as they are.
            flow.request.raw_content = result.body
            changes: dict[bytes, bytes | None] = {}
            if "transfer-encoding" not in call.request_headers:
                changes[b"content-length"] = str(len(result.body)).encode()
            if not result.client_asked_usage:
                # The usage-only chunk is cut out of the stream before the client sees it; that needs
                # the SSE bytes in the clear.
                changes[b"accept-encoding"] = b"identity"
            if changes:
                flow.request.headers.fields = with_headers(flow.request.headers.fields, changes)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Lets the call's parsed request go once its answer starts: every part that reads it has, in its
        `request` hook (the budget's estimate, the credentials' affinity, the cache shape, the change list
        mitmweb shows), so a stream minutes long does not hold its prompt parsed. Kept while ops exports
        prompt content with each call (`core.keeps_request_json`)."""
        call = self.core.calls.get(flow.id)
        if call is not None and not self.core.keeps_request_json:
            call.request_json_before = call.request_json = None
