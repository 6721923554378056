"""Budget admission: a budgeted client's call is admitted only if its worst-case cost fits.

Runs after the gate (who is calling) and the rewrite (the model and max_tokens the call really goes out
with). Over budget, sluice answers itself — 429 in the provider's envelope, naming the budget, the period and
when it resets, with `x-should-retry: false` so SDKs do not hammer it — and the upstream is never
contacted. The hold is settled when the call's row is written (addons/calls.py, state/budgets.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime

from mitmproxy import ctx, http

from addons.core import SluiceCore
from rules.estimate import estimate_tokens
from state import db as sluice_db
from state.budgets import BudgetLedger
from state.pricing import price_call

log = logging.getLogger("sluice")


class Budget:
    def __init__(self, core: SluiceCore) -> None:
        self.core = core
        self.ledger: BudgetLedger | None = None
        self.limits: dict[str, tuple[float, str]] = {}

    def configure(self, updated: set[str]) -> None:
        if not {"sluice_config", "sluice_db"} & updated:
            return
        self.limits = {c.name: (c.budget.usd, c.budget.period) for c in self.core.config.clients if c.budget}
        if not self.limits:
            self.ledger = None
            return
        if self.ledger is None or "sluice_db" in updated:
            self.ledger = BudgetLedger(sluice_db.connect(ctx.options.sluice_db))
        self.ledger.sync_budgets(self.limits)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live or self.ledger is None:
            return
        call = self.core.calls.get(flow.id)
        if call is None or call.client not in self.limits or call.api == "count_tokens":
            return
        usd, period = self.limits[call.client]
        input_tokens, output_tokens = estimate_tokens(
            call.api, call.request_json, len(flow.request.raw_content or b"")
        )
        priced = price_call(
            call.provider, call.request_model, input_tokens=input_tokens, output_tokens=output_tokens
        )
        estimate = priced.cost_usd or 0.0
        admission = await asyncio.to_thread(
            self.ledger.admit, call.flow_id, call.client, estimate, usd, period
        )
        if admission.admitted:
            call.budget_hold = estimate
            return
        message = admission.refusal()
        headers = {"x-should-retry": "false"}
        if admission.resets_at is not None:
            wait = (admission.resets_at - datetime.now(UTC)).total_seconds()
            headers["retry-after"] = str(max(1, math.ceil(wait)))
        self.core.answer(flow, call.provider, 429, message, headers, "refused: budget exhausted")
        log.info("sluice: flow %s: %s", flow.id, message)
