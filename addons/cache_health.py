"""Flags calls that continue a conversation but read nothing from the prompt cache (rules/cache_health.py).

At `request` (after the rewrite: the body as it goes upstream) the prompt's shape is read and the call is
put in its conversation. When the call's record is built (Meter's `before_record`), it is judged against
the conversation's previous call: `cache_status` and `cache_note` go into the row, and onto the flow's
`metadata["sluice"]["cache"]` for the contentview; annotate.py marks a miss in the flow list.

Conversations are remembered in memory only, the most recent `MAX_CONVERSATIONS` of them (least recently
used first out): a restarted proxy starts with none, so the first call of each conversation after a restart
is never called a miss.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from mitmproxy import http

from addons.calls import Call
from addons.changes import sluice_metadata
from addons.core import SluiceCore
from addons.rewrite import OFF_LOOP_BYTES
from rules.cache_health import (
    BlockDigests,
    PromptShape,
    Turn,
    conversation_key,
    judge_cache,
    read_prompt_shape,
    remember,
)
from rules.usage import Reading
from state.writer import CallRecord

log = logging.getLogger("sluice")

MAX_CONVERSATIONS = 4096


class CacheHealth:
    def __init__(self, core: SluiceCore, max_conversations: int = MAX_CONVERSATIONS) -> None:
        self.core = core
        self.max_conversations = max_conversations
        self.conversations: OrderedDict[str, Turn] = OrderedDict()
        self.pending: dict[str, tuple[str, PromptShape]] = {}
        self.digests = BlockDigests()

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live:
            return
        call = self.core.calls.get(flow.id)
        if call is None or call.api not in ("messages", "chat", "responses"):
            return
        body = call.request_json  # as the rewrite parsed and left it: what goes upstream
        if body is None:
            return  # fails open: a body the rewrite could not read is recorded, just not judged
        if len(flow.request.raw_content or b"") >= OFF_LOOP_BYTES:
            # Hashing a large prompt's blocks takes tens of ms: keep it off the loop (it is pure).
            shape = await asyncio.to_thread(read_prompt_shape, call.provider, call.api, body, self.digests)
        else:
            shape = read_prompt_shape(call.provider, call.api, body, self.digests)
        if shape is not None:
            key = conversation_key(call.provider, call.request_model, call.session_id, call.client, shape)
            self.pending[flow.id] = (key, shape)

    def before_record(self, flow: http.HTTPFlow, call: Call, reading: Reading, record: CallRecord) -> None:
        """Meter's hook: judge the finished call and put the verdict into its row and onto the flow."""
        pending = self.pending.pop(call.flow_id, None)
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
        self.pending.pop(flow.id, None)  # a call the meter did not finish (never metered) leaves nothing

    def error(self, flow: http.HTTPFlow) -> None:
        self.pending.pop(flow.id, None)

    def _remember(self, key: str, turn: Turn) -> None:
        self.conversations[key] = turn
        self.conversations.move_to_end(key)
        while len(self.conversations) > self.max_conversations:
            self.conversations.popitem(last=False)
