"""Flags calls that continue a conversation but read nothing from the prompt cache (rules/cache_health.py).

Right after `request` (after the rewrite: the body as it goes upstream), while the request travels, the
prompt's shape is read and the call put in its conversation. When the call's record is built (Meter's
`before_record`), it is judged against the conversation's previous call: `cache_status` and `cache_note` go
into the row, and onto the flow's `metadata["sluice"]["cache"]` for the contentview; annotate.py marks a
miss in the flow list.

Conversations are remembered in memory only, the most recent `MAX_CONVERSATIONS` of them (least recently
used first out): a restarted proxy starts with none, so the first call of each conversation after a restart
is never called a miss.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from mitmproxy import http

from addons.calls import Call
from addons.changes import sluice_metadata
from addons.core import SluiceCore
from addons.decoding import OFF_LOOP_BYTES
from rules.cache_health import (
    PromptShape,
    Turn,
    conversation_key,
    judge_cache,
    read_prompt_shape,
    remember,
)
from rules.providers import wire_format
from rules.usage import Reading
from state.writer import CallRecord

log = logging.getLogger("sluice")

MAX_CONVERSATIONS = 4096


class CacheHealth:
    def __init__(self, core: SluiceCore, max_conversations: int = MAX_CONVERSATIONS) -> None:
        self.core = core
        self.max_conversations = max_conversations
        self.conversations: OrderedDict[str, Turn] = OrderedDict()
        self.pending: dict[str, asyncio.Future[tuple[str, PromptShape] | None]] = {}

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live:
            return
        call = self.core.calls.get(flow.id)
        if call is None or wire_format(call.api).prompt_shape is None:
            return  # a wire format whose prompt cache is not judged
        body = call.request_json  # as the rewrite parsed and left it: what goes upstream
        if body is None:
            return  # fails open: a body the rewrite could not read is recorded, just not judged
        # The shape is only needed once the call ends: it is read after this hook, while the request is
        # on its way upstream, not before (responseheaders waits for it).
        if len(flow.request.raw_content or b"") >= OFF_LOOP_BYTES:
            # Hashing a large prompt's blocks takes tens of ms: off the loop (it is pure).
            self.pending[flow.id] = asyncio.ensure_future(asyncio.to_thread(_conversation_shape, call, body))
        else:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[tuple[str, PromptShape] | None] = loop.create_future()
            loop.call_soon(_settle, future, call, body)
            self.pending[flow.id] = future

    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        future = self.pending.get(flow.id)
        if future is not None and not future.done():
            await asyncio.wait([future])

    def before_record(self, flow: http.HTTPFlow, call: Call, reading: Reading, record: CallRecord) -> None:
        """Meter's hook: judge the finished call and put the verdict into its row and onto the flow."""
        future = self.pending.pop(call.flow_id, None)
        # Not done only when the call failed before its response headers: such a call is not judged.
        pending = future.result() if future is not None and future.done() else None
        if pending is None:
            return
        key, shape = pending
        row = record.row
        usage, started = reading.usage, call.started
        read = usage.cache_read_tokens or 0
        written = (usage.cache_write_5m_tokens or 0) + (usage.cache_write_1h_tokens or 0)
        ok = row.get("status") == 200 and not row.get("error") and reading.usage_seen
        verdict = judge_cache(
            self.conversations.get(key),
            shape,
            started=call.started,
            credential=call.credential,
            cache_read=read,
            cache_write=written,
            ok=ok,
        )
        if ok:
            turn = remember(shape, started=started, credential=call.credential, cached=read + written > 0)
            self._remember(key, turn)
        if verdict.status is None:
            return
        record.row = {**row, "cache_status": verdict.status, "cache_note": verdict.note}
        cache = {"status": verdict.status}
        if verdict.note:
            cache["note"] = verdict.note
        sluice_metadata(flow)["cache"] = cache
        if verdict.note:
            log.info("sluice: flow %s: prompt cache miss: %s", flow.id, verdict.note)

    def response(self, flow: http.HTTPFlow) -> None:
        self._forget(flow.id)

    def error(self, flow: http.HTTPFlow) -> None:
        self._forget(flow.id)

    def _forget(self, flow_id: str) -> None:
        """A call the meter did not finish leaves nothing behind. The meter may build a row once the
        response has left (addons/meter.py): it scheduled that before this hook ran, so forgetting is
        scheduled after it."""
        if flow_id not in self.pending:
            return
        try:
            asyncio.get_running_loop().call_soon(self.pending.pop, flow_id, None)
        except RuntimeError:
            self.pending.pop(flow_id, None)

    def _remember(self, key: str, turn: Turn) -> None:
        self.conversations[key] = turn
        self.conversations.move_to_end(key)
        while len(self.conversations) > self.max_conversations:
            self.conversations.popitem(last=False)


def _conversation_shape(call: Call, body: dict[str, Any]) -> tuple[str, PromptShape] | None:
    shape = read_prompt_shape(wire_format(call.api), body)
    if shape is None:
        return None
    return conversation_key(call.provider, call.request_model, call.session_id, call.client, shape), shape


def _settle(future: asyncio.Future[tuple[str, PromptShape] | None], call: Call, body: dict[str, Any]) -> None:
    if future.done():
        return
    try:
        future.set_result(_conversation_shape(call, body))
    except Exception as e:  # fails open: the call is recorded, just not judged (and nothing waits forever)
        log.warning("sluice: flow %s: prompt shape not read: %r", call.flow_id, e)
        future.set_result(None)
