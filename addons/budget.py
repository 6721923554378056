"""Budget admission: a budgeted client's call is admitted only if its worst-case cost fits.

Runs after the gate (who is calling) and the rewrite (the model and max_tokens the call really goes out
with). Over budget, sluice answers itself — 429 in the provider's envelope, naming the budget, the period and
when it resets, with `x-should-retry: false` so SDKs do not hammer it — and the upstream is never
contacted. The hold is settled when the call's row is written (addons/calls.py, state/budgets.py).

Fails closed: a call is admitted only with a positive estimate it can afford (state/pricing.py's
`estimate_call`). A model genai-prices has no price for is refused with 403 naming the option
`budget_price_unknown_models_as`, which prices such models as a known one, both for the hold and when
the call is settled. A body sluice could not read (not JSON, duplicate keys, compressed, nested too deep)
is estimated at the provider's highest known prices.
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime

from mitmproxy import ctx, exceptions, http

from addons.core import SluiceCore
from rules.providers import providers, wire_format
from state import db as sluice_db
from state.budgets import BudgetLedger
from state.pricing import estimate_call, highest_prices, price_call

UNKNOWN_MODELS_OPTION = "budget_price_unknown_models_as"

log = logging.getLogger("sluice")


class Budget:
    security = True  # addons/chain.py: a failure here fails closed (what may be spent)

    def __init__(self, core: SluiceCore) -> None:
        self.core = core
        self.ledger: BudgetLedger | None = None
        self.limits: dict[str, tuple[float, str]] = {}

    def configure(self, updated: set[str]) -> None:
        if not {"sluice_config", "sluice_db"} & updated:
            return
        self.limits = {c.name: (c.budget.usd, c.budget.period) for c in self.core.config.clients if c.budget}
        self._check_stand_ins()
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
        if call is None or call.client not in self.limits or not wire_format(call.api).billed:
            return
        usd, period = self.limits[call.client]
        stand_in = self.core.config.budget_price_unknown_models_as.get(call.provider)
        call.price_unknown_as = stand_in
        # `request_json` is None exactly when the rewrite could not read the body; `request_model` is then
        # None too, which is why such a body once cost nothing here.
        found = estimate_call(
            call.provider,
            call.api,
            call.request_model,
            call.request_json,
            len(flow.request.raw_content or b""),
            unknown_model_as=stand_in,
            option=UNKNOWN_MODELS_OPTION,
        )
        if found.cost_usd is None:
            message = found.refusal or "sluice: this call's cost cannot be estimated"
            headers = {"x-should-retry": "false"}
            note = f"refused: {found.reason or 'cost cannot be estimated'}"
            self.core.answer(flow, 403, message, headers, note)
            log.info("sluice: flow %s: %s", flow.id, message)
            return
        if found.note:
            call.notes.append(f"budget estimate: {found.note}")
        estimate = found.cost_usd
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
        self.core.answer(flow, 429, message, headers, "refused: budget exhausted")
        log.info("sluice: flow %s: %s", flow.id, message)

    def _check_stand_ins(self) -> None:
        """Fail start-up when a model named to price unknown models as has no price itself (a typo would
        otherwise refuse every such call at run time), and read the providers' highest prices now."""
        for provider, model in self.core.config.budget_price_unknown_models_as.items():
            priced = price_call(provider, model, input_tokens=1_000, output_tokens=1_000)
            if priced.cost_usd is None or priced.cost_usd <= 0:
                reason = priced.note or "no price"
                raise exceptions.OptionsError(
                    f"sluice_config: {UNKNOWN_MODELS_OPTION}.{provider} = {model!r}: {reason}"
                )
        for known in providers():
            highest_prices(known.name)
