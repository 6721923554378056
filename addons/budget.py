"""Admission: a call of a governed client is admitted only within its window share, its rate limits and
its budget, its team's included.

Runs after the gate (who is calling) and the rewrite (the model and max_tokens the call really goes out
with). In order, each refusal answered by sluice itself in the provider's envelope, the upstream never
contacted, and the row's note naming the limit, its value and when it resets:

1. **Window share** (`window_share = { "5h" = 0.6 }`, the client's and its team's: the smaller counts): while
   every usable credential of the upstream has used that share of a subscription window, the client gets 429
   with `retry-after` at the window's reset; other clients keep going. Read from the rate-limit headers and
   OAuth usage readings sluice records (state/rates.py `window_use`).
2. **Rate limits** (`limits = { rpm, input_tpm, output_tpm, concurrent }`): 429 with an honest
   `retry-after`, `x-should-retry: true` and the provider's own rate-limit headers (its `limit_headers`), so
   the official SDKs back off and retry by themselves; `x-sluice-limit` says they are sluice's.
3. **Budgets** (the client's and its team's, in one transaction): 429 naming the budget, the period and when
   it resets, `x-should-retry: false`. The hold is settled when the call's row is written (addons/calls.py,
   state/budgets.py).

Fails closed: a budget admits a call only with a positive estimate it can afford (state/pricing.py's
`estimate_call`). A model genai-prices has no price for is refused with 403 naming the option
`budget_price_unknown_models_as`, which prices such models as a known one, both for the hold and when
the call is settled. A body sluice could not read (not JSON, duplicate keys, compressed, nested too deep)
is estimated at the provider's highest known prices, and at an output it cannot bound for rate limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from datetime import UTC, datetime

import psycopg
from mitmproxy import exceptions, http

from addons.calls import Call
from addons.core import SluiceCore
from rules.config import Config, Limits
from rules.estimate import estimate_tokens
from rules.providers import providers, wire_format
from state.budgets import BudgetLedger, BudgetUnknown, TeamBudget, budget_usd
from state.pricing import estimate_call, highest_prices, price_as, price_call
from state.rates import (
    HEARTBEAT_S,
    RateLedger,
    RateRefusal,
    RateScope,
    WindowUse,
    new_owner,
    uncountable_input,
    window_use,
)
from state.store import AnyStore

UNKNOWN_MODELS_OPTION = "budget_price_unknown_models_as"
# The retry-after of a rate-limited call refused while the database is away.
RATES_AWAY_RETRY_S = 5

log = logging.getLogger("sluice")


class Budget:
    security = True  # addons/chain.py: a failure here fails closed (what may be spent)

    def __init__(self, core: SluiceCore) -> None:
        self.core = core
        self.ledger: BudgetLedger | None = None
        self.rates: RateLedger | None = None
        self._store: AnyStore | None = None  # the store the ledgers' connections came from
        self.limits: dict[str, tuple[float, str]] = {}
        self.team_budgets: dict[str, TeamBudget] = {}
        self.team_of: dict[str, str] = {}
        self.rate_scopes: dict[str, list[RateScope]] = {}
        self.shares: dict[str, dict[str, float]] = {}
        self.streamed: set[str] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self.owner = new_owner()  # this proxy, among those on one database
        self._rates_away = False

    def configure(self, updated: set[str]) -> None:
        if "sluice_config" not in updated and self.core.store is self._store:
            return
        config = self.core.config
        self.limits = {c.name: (c.budget.usd, c.budget.period) for c in config.clients if c.budget}
        self.team_of = {member: team.name for team in config.teams for member in team.members}
        self.team_budgets = {
            team.name: TeamBudget(team.name, team.budget.usd, team.budget.period)
            for team in config.teams
            if team.budget
        }
        self.rate_scopes = _rate_scopes(config)
        self.shares = _shares(config)
        self.streamed = _streamed(config)
        self._check_stand_ins()
        if not (self.limits or self.team_budgets or self.rate_scopes or self.shares):
            self.ledger = self.rates = None
            self._store = self.core.store
            return
        store = self.core.store
        if store is None:
            raise exceptions.OptionsError("sluice_db: no database is open yet")
        if not self.limits and not self.team_budgets:
            self.ledger = None
        else:
            if self.ledger is None or store is not self._store:
                self.ledger = BudgetLedger(store.connect(), connect=store.connect, owner=self.owner)
            self.ledger.sync_budgets(
                self.limits,
                {
                    team.name: (team.budget.usd, team.budget.period, team.members)
                    for team in config.teams
                    if team.budget
                },
            )
            self.ledger.refresh(self.limits, self.team_budgets)  # what admissions decide from if it goes away
        if not self.rate_scopes:
            self.rates = None
        elif self.rates is None or store is not self._store:
            self.rates = RateLedger(store.connect(), owner=self.owner, connect=store.connect)
        self._store = store

    def running(self) -> None:
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    def done(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self.ledger is not None:
            self.ledger.write_back()  # the holds admitted while the database was away, if any

    async def _beat(self) -> None:
        """Say this proxy is alive every HEARTBEAT_S, so its calls in flight keep counting, and read the
        budgets, so what an admission decides from while the database is away is at most that old."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            rates, ledger = self.rates, self.ledger
            if rates is not None:
                try:
                    await asyncio.to_thread(rates.heartbeat)
                except Exception as e:  # a busy or missing database: the next beat tries again
                    log.warning("sluice: rate limits: could not say this proxy is alive: %s", e)
            if ledger is not None:
                try:
                    await asyncio.to_thread(ledger.refresh, self.limits, self.team_budgets)
                except Exception as e:  # a busy database: the next beat tries again
                    log.warning("sluice: budgets: could not read the budgets: %s", e)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live:
            return
        call = self.core.calls.get(flow.id)
        if call is None or call.client is None or not wire_format(call.api).billed:
            return
        client = call.client
        if client in self.shares and not await self._within_share(flow, call, self.shares[client]):
            return
        if client in self.rate_scopes and not await self._within_rates(flow, call):
            return
        team = self.team_budgets.get(self.team_of.get(client, ""))
        if self.ledger is None or (client not in self.limits and team is None):
            return
        if not await self._within_budget(flow, call, team):
            await self._release_rate(call)

    async def _within_share(self, flow: http.HTTPFlow, call: Call, shares: dict[str, float]) -> bool:
        upstream = self.core.upstream_for(flow.request.host)
        if upstream is None:
            return True
        store = self.core.store
        if store is None:
            return True  # no database yet: nothing is known of the windows

        def read() -> list[WindowUse]:
            with store.reading() as db:
                return window_use(db, upstream.host, list(shares), datetime.now(UTC))

        for use in await asyncio.to_thread(read):
            share = shares[use.window]
            if use.utilization < share:
                continue
            resets = use.resets_at.isoformat() if use.resets_at else "a time the provider did not say"
            who = f"client {call.client}"
            message = (
                f"sluice: window share for {who}: {share:.0%} of the {use.window} window, and every "
                f"credential has used {use.utilization:.0%} of it; it resets at {resets}"
            )
            headers = {"x-should-retry": "false", "x-sluice-limit": f"{who} window_share {use.window}"}
            if use.resets_at is not None:
                wait = (use.resets_at - datetime.now(UTC)).total_seconds()
                headers["retry-after"] = str(max(1, math.ceil(wait)))
            note = f"refused: window share ({who}: {use.window} {share:.0%}, {use.utilization:.0%} used, "
            note += f"resets {resets})"
            self.core.answer(flow, 429, message, headers, note)
            log.info("sluice: flow %s: %s", flow.id, message)
            return False
        return True

    async def _within_rates(self, flow: http.HTTPFlow, call: Call) -> bool:
        rates = self.rates
        if rates is None or call.client is None:
            return True
        wire = wire_format(call.api)
        input_tokens, output_tokens = estimate_tokens(
            wire, call.request_json, len(flow.request.raw_content or b"")
        )
        scopes = self.rate_scopes[call.client]
        encoding = flow.request.headers.get("content-encoding", "").strip().lower()
        if call.request_json is None and encoding not in ("", "identity"):
            uncounted = uncountable_input(scopes, encoding)
            if uncounted is not None:
                self._refuse_rate(flow, uncounted)
                return False
        team = self.team_of.get(call.client)
        try:
            refusal = await asyncio.to_thread(
                rates.admit, call.flow_id, call.client, team, input_tokens, output_tokens, scopes
            )
        except psycopg.OperationalError as e:
            self._refuse_rates_away(flow, call.client, e)
            return False
        if self._rates_away:
            self._rates_away = False
            log.warning("sluice: rate limits: the database is back; limits are counted again")
        if refusal is None:
            call.rate_held = True
            if call.finished or flow.error is not None:
                await self._release_rate(call)  # the client went while it was admitted: no row will settle it
                return False
            return True
        self._refuse_rate(flow, refusal)
        return False

    def _refuse_rates_away(self, flow: http.HTTPFlow, client: str, error: psycopg.OperationalError) -> None:
        """A rate-limited call while PostgreSQL is away: limits the fleet shares cannot be counted, so the
        call is refused (fails closed), with 503 and a short retry-after the SDKs honour; said loudly once."""
        message = (
            f"sluice: rate limits of client {client} cannot be counted: the database is away; "
            f"retry in {RATES_AWAY_RETRY_S} s"
        )
        headers = {"x-should-retry": "true", "retry-after": str(RATES_AWAY_RETRY_S)}
        self.core.answer(flow, 503, message, headers, "refused: rate limits not countable, database away")
        if not self._rates_away:
            self._rates_away = True
            log.warning("sluice: rate limits: the database is away (%s); refusing rate-limited calls", error)

    def _refuse_rate(self, flow: http.HTTPFlow, refusal: RateRefusal) -> None:
        headers = {"x-sluice-limit": f"{refusal.kind} {refusal.name} {refusal.limit}"}
        if refusal.never_fits:
            headers["x-should-retry"] = "false"
        else:
            wait = refusal.retry_after_s if refusal.retry_after_s is not None else 1.0
            headers["x-should-retry"] = "true"
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
            speaks = self.core.envelope(flow)
            if speaks is not None and speaks.limit_headers is not None:
                remaining = max(0, refusal.value - refusal.used)
                headers.update(speaks.limit_headers(refusal.limit, refusal.value, remaining, wait))
        self.core.answer(flow, 429, refusal.message(), headers, refusal.note())
        log.info("sluice: flow %s: %s", flow.id, refusal.message())

    async def _release_rate(self, call: Call) -> None:
        if call.rate_held and self.rates is not None:
            call.rate_held = False
            with contextlib.suppress(Exception):  # the admission then ends with the minute it counts in
                await asyncio.to_thread(self.rates.release, call.flow_id)

    async def _within_budget(self, flow: http.HTTPFlow, call: Call, team: TeamBudget | None) -> bool:
        assert self.ledger is not None and call.client is not None
        own = self.limits.get(call.client)
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
            return False
        if found.note:
            call.notes.append(f"budget estimate: {found.note}")
        estimate = found.cost_usd
        minimum = self._stream_minimum(flow, call, team) if call.client in self.streamed else None
        try:
            admission = await asyncio.to_thread(
                self.ledger.admit,
                call.flow_id,
                call.client,
                estimate,
                own[0] if own else None,
                own[1] if own else "day",
                team=team,
                minimum_usd=minimum,
            )
        except BudgetUnknown as e:
            self.core.answer(
                flow, 503, str(e), {"x-should-retry": "true"}, "refused: budget unknown, database away"
            )
            log.warning("sluice: flow %s: %s", flow.id, e)
            return False
        if admission.away is not None:
            call.notes.append(f"budget: {admission.away}")
        if admission.admitted:
            call.budget_hold = admission.hold_usd
            if admission.capped:
                call.stream_budget = admission.hold_usd
                call.notes.append(
                    f"budget: admitted with ${admission.hold_usd:.4f} left, enforced mid-stream"
                )
            return True
        message = admission.refusal()
        headers = {"x-should-retry": "false"}
        whose = f"team {admission.team}" if admission.team else f"client {call.client}"
        headers["x-sluice-limit"] = f"{whose} {admission.limit.replace(' ', '_')}"
        if admission.resets_at is not None:
            wait = (admission.resets_at - datetime.now(UTC)).total_seconds()
            headers["retry-after"] = str(max(1, math.ceil(wait)))
        spent = admission.spent_usd + admission.reserved_usd
        resets = f", resets {admission.resets_at.isoformat()}" if admission.resets_at else ""
        note = f"refused: {admission.limit} exhausted ({whose}: {budget_usd(admission.limit_usd)}/"
        note += f"{admission.period}, ${spent:.4f} used{resets})"
        self.core.answer(flow, 429, message, headers, note)
        log.info("sluice: flow %s: %s", flow.id, message)
        return False

    def _stream_minimum(self, flow: http.HTTPFlow, call: Call, team: TeamBudget | None) -> float | None:
        """The least a budget enforced mid-stream admits a call with: its input and a token of output, priced
        as its hold is. None where the call's stream cannot be metered as it flows (not streamed, a wire
        format whose output sluice cannot count, a body it could not read)."""
        wire = wire_format(call.api)
        body = call.request_json
        if body is None or body.get("stream") is not True or wire.output_chars is None:
            return None
        input_tokens, _ = estimate_tokens(wire, body, len(flow.request.raw_content or b""))
        priced = price_as(
            price_call(call.billed_by, call.request_model, input_tokens=input_tokens, output_tokens=1),
            call.price_unknown_as,
            lambda name: price_call(call.billed_by, name, input_tokens=input_tokens, output_tokens=1),
        )
        return priced.cost_usd if priced.cost_usd else None

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


def _rate_scopes(config: Config) -> dict[str, list[RateScope]]:
    """Each rate-limited client's scopes: its own limits, then its team's."""
    found: dict[str, list[RateScope]] = {}
    for client in config.clients:
        scopes = []
        if client.limits is not None:
            scopes.append(_scope("client", client.name, client.limits))
        team = config.team_of(client.name)
        if team is not None and team.limits is not None:
            scopes.append(_scope("team", team.name, team.limits))
        scopes = [scope for scope in scopes if scope.limited()]
        if scopes:
            found[client.name] = scopes
    return found


def _scope(kind: str, name: str, limits: Limits) -> RateScope:
    return RateScope(kind, name, limits.rpm, limits.input_tpm, limits.output_tpm, limits.concurrent)


def _shares(config: Config) -> dict[str, dict[str, float]]:
    """Each client's window shares: its own and its team's, the smaller where both name a window."""
    found: dict[str, dict[str, float]] = {}
    for client in config.clients:
        shares = dict(client.window_share)
        team = config.team_of(client.name)
        if team is not None:
            for window, share in team.window_share.items():
                shares[window] = min(share, shares.get(window, share))
        if shares:
            found[client.name] = shares
    return found


def _streamed(config: Config) -> set[str]:
    """The clients with a budget every one of which (their own, their team's) is enforced mid-stream."""
    found = set()
    for client in config.clients:
        team = config.team_of(client.name)
        budgets = [b for b in (client.budget, team.budget if team is not None else None) if b is not None]
        if budgets and all(budget.enforce == "stream" for budget in budgets):
            found.add(client.name)
    return found
