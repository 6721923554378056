"""The parts' order (addons/order.py): every pair is checked when the chain is built, a swapped pair stops it
naming the pair and why, and, for the pairs that guard a credential, a client or a body, what goes wrong
when the two are swapped anyway."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode

import addons.sluice as sluice
from addons.budget import Budget
from addons.chain import Chain
from addons.confine import Confinement
from addons.credentials import Credentials
from addons.echo import EchoScrub
from addons.framing import Framing
from addons.gate import Gate
from addons.headers import Headers
from addons.meter import Meter
from addons.order import ANY, ORDER, Before, PartOrderError, broken_pairs, check, name_of, run_orders
from addons.rewrite import Rewrite
from addons.sandbox import Sandbox
from rules.usage import Reading
from state.writer import CallRecord
from tests.addons.proxy import CLIENT_KEY, CONFIG, HOST, REAL_KEY, answer, configured, llm_flow, on_the_wire


def test_sluice_runs_its_parts_in_an_order_that_keeps_every_pair() -> None:
    assert broken_pairs(sluice.parts) == []
    check(sluice.parts)


def test_every_pair_names_parts_sluice_has() -> None:
    names = {name for names in run_orders(sluice.parts) for name in names}
    assert [rule for rule in ORDER if rule.before not in names or rule.after not in names | {ANY}] == []


def _swap(parts: list[object], rule: Before) -> list[object]:
    """sluice's parts with the rule's two the other way round."""
    if rule.after == ANY:
        return [parts[1], parts[0], *parts[2:]]
    if "." in rule.before:  # two observers of the meter
        index = next(i for i, part in enumerate(parts) if isinstance(part, Meter))
        meter = parts[index]
        assert isinstance(meter, Meter)
        swapped = Meter(meter.core, before_record=list(reversed(meter.before_record)))
        return [*parts[:index], swapped, *parts[index + 1 :]]
    names = [name_of(part) for part in parts]
    i, j = names.index(rule.before), names.index(rule.after)
    swapped_parts = list(parts)
    swapped_parts[i], swapped_parts[j] = parts[j], parts[i]
    return swapped_parts


@pytest.mark.parametrize("rule", ORDER, ids=[f"{rule.before}-before-{rule.after}" for rule in ORDER])
def test_swapping_a_pair_stops_the_chain_naming_the_pair_and_why(rule: Before) -> None:
    parts = _swap(list(sluice.parts), rule)
    with pytest.raises(PartOrderError) as refused:
        Chain("sluice", parts)
    assert rule in refused.value.broken
    assert f"{rule.before} must run before {rule.after}: {rule.why}" in str(refused.value)


def test_a_pair_with_a_part_missing_holds() -> None:
    rule = Before("Gate", "Budget", "why")
    assert broken_pairs([object(), "not a part"], [rule]) == []
    check([sluice.core], [rule])


def test_every_security_pair_has_a_behavioural_test_below() -> None:
    shown = {
        ("Confinement", "Gate"),
        ("Confinement", "Headers"),
        ("Sandbox", "Headers"),
        ("Gate", "Budget"),
        ("Rewrite", "Credentials"),
        ("Headers", "Credentials"),
        ("Framing", "Credentials"),
        ("EchoScrub", "Meter"),
        ("EchoScrub", "Credentials"),
    }
    assert {(rule.before, rule.after) for rule in ORDER if rule.security} == shown


# --- what goes wrong when a security pair is swapped anyway (the check is bypassed: ordering=()) -----------

BUDGETED = CONFIG.replace('user_id = "alice@example.com"', 'budget = { usd = 0.0001, period = "day" }')
SYSTEM_BLOCK = CONFIG + '\n[[rules.system_blocks]]\nname = "policy"\ntext = "' + "Be brief. " * 50 + '"\n'


def run(coroutine: object) -> None:
    asyncio.run(coroutine)  # type: ignore[arg-type]


def transparent_flow(key: str | None) -> http.HTTPFlow:
    """A transparent-mode request whose connection was headed for an address the client chose, naming the
    credential host in its TLS server name and Host."""
    flow = llm_flow(key=key)
    flow.request.data.host = "203.0.113.9"  # the Host header stays
    flow.client_conn.proxy_mode = ProxyMode.parse("transparent")
    flow.client_conn.tls = True
    return flow


@pytest.mark.parametrize("swapped", [False, True], ids=["in-order", "swapped"])
def test_confinement_after_the_gate_lets_a_keyless_transparent_request_have_the_real_credential(
    tmp_path: Path, swapped: bool
) -> None:
    def parts(core):  # type: ignore[no-untyped-def]
        pair = [Confinement(core), Gate(core)]
        return [*(reversed(pair) if swapped else pair), Headers(core), Credentials(core)]

    flow = transparent_flow(key=None)
    with configured(tmp_path, parts, ordering=()) as proxy:
        run(proxy.hook("request", flow))
    wire = on_the_wire(flow)
    if swapped:
        assert flow.response is None and wire.headers["x-api-key"] == REAL_KEY
    else:
        assert flow.response is not None and flow.response.status_code == 401
        assert REAL_KEY not in str(wire.headers)


@pytest.mark.parametrize("swapped", [False, True], ids=["in-order", "swapped"])
def test_confinement_after_the_header_filter_lets_cookies_through_on_a_transparent_request(
    tmp_path: Path, swapped: bool
) -> None:
    def parts(core):  # type: ignore[no-untyped-def]
        pair = [Confinement(core), Headers(core)]
        return [*(reversed(pair) if swapped else pair)]

    flow = transparent_flow(key=CLIENT_KEY)
    flow.request.path = "/v1/models"  # not a metered call: only the destination says whose policy applies
    flow.request.method = "GET"
    flow.request.headers["cookie"] = "session=secret"
    with configured(tmp_path, parts, ordering=()) as proxy:
        run(proxy.hook("request", flow))
    assert flow.request.host == HOST
    assert ("cookie" in flow.request.headers) is swapped


@pytest.mark.parametrize("swapped", [False, True], ids=["in-order", "swapped"])
def test_a_sandbox_after_the_header_filter_lets_cookies_through_to_a_provider(
    tmp_path: Path, swapped: bool
) -> None:
    def parts(core):  # type: ignore[no-untyped-def]
        pair = [Sandbox(core), Headers(core)]
        return [Confinement(core), *(reversed(pair) if swapped else pair)]

    flow = transparent_flow(key=None)
    flow.request.data.host = "10.201.0.1"  # the sandbox's side of its link: where every connection goes
    flow.client_conn.sni = "api.openai.com"  # a provider's own host, with no [[upstreams]] entry
    flow.request.headers["host"] = "api.openai.com"
    flow.request.path, flow.request.method = "/v1/models", "GET"
    flow.request.headers["cookie"] = "session=secret"
    with configured(tmp_path, parts, ordering=(), sluice_sandbox=True) as proxy:
        run(proxy.hook("request", flow))
    assert flow.response is None and flow.request.host == "api.openai.com"
    assert ("cookie" in flow.request.headers) is swapped


@pytest.mark.parametrize("swapped", [False, True], ids=["in-order", "swapped"])
def test_a_budget_before_the_gate_admits_every_call(tmp_path: Path, swapped: bool) -> None:
    def parts(core):  # type: ignore[no-untyped-def]
        pair = [Gate(core), Budget(core)]
        return [*(reversed(pair) if swapped else pair), Credentials(core)]

    flow = llm_flow({**_big_message()})
    with configured(tmp_path, parts, BUDGETED, ordering=()) as proxy:
        run(proxy.hook("request", flow))
    if swapped:
        assert flow.response is None and on_the_wire(flow).headers["x-api-key"] == REAL_KEY
    else:
        assert flow.response is not None and flow.response.status_code == 429
        assert REAL_KEY not in str(on_the_wire(flow).headers)


def _big_message() -> dict[str, object]:
    return {**json.loads(json.dumps({"model": "claude-opus-4-1", "max_tokens": 32000})), "messages": []}


@pytest.mark.parametrize("swapped", [False, True], ids=["in-order", "swapped"])
def test_headers_after_the_swap_send_what_the_allow_list_drops_with_the_real_credential(
    tmp_path: Path, swapped: bool
) -> None:
    def parts(core):  # type: ignore[no-untyped-def]
        pair = [Headers(core), Credentials(core)]
        return [Gate(core), *(reversed(pair) if swapped else pair)]

    flow = llm_flow(headers=[("cookie", "session=secret")])
    with configured(tmp_path, parts, ordering=()) as proxy:
        run(proxy.hook("request", flow))
    wire = on_the_wire(flow)
    assert wire.headers["x-api-key"] == REAL_KEY
    assert ("cookie" in wire.headers) is swapped


@pytest.mark.parametrize("swapped", [False, True], ids=["in-order", "swapped"])
def test_a_rewrite_after_the_swap_sends_a_new_body_with_the_old_length(tmp_path: Path, swapped: bool) -> None:
    def parts(core):  # type: ignore[no-untyped-def]
        pair = [Rewrite(core), Credentials(core)]
        return [Gate(core), *(reversed(pair) if swapped else pair)]

    flow = llm_flow()
    sent_length = len(flow.request.raw_content or b"")
    with configured(tmp_path, parts, SYSTEM_BLOCK, ordering=()) as proxy:
        run(proxy.hook("request", flow))
    wire = on_the_wire(flow)
    body = flow.request.raw_content or b""
    assert b"Be brief." in body  # the rule applied either way
    declared = int(wire.headers["content-length"])
    if swapped:
        assert declared == sent_length != len(body)  # the upstream reads part of the body as a next request
    else:
        assert declared == len(body)


@pytest.mark.parametrize("swapped", [False, True], ids=["in-order", "swapped"])
def test_framing_after_the_swap_sends_an_http2_body_unframed(tmp_path: Path, swapped: bool) -> None:
    def parts(core):  # type: ignore[no-untyped-def]
        pair = [Framing(), Credentials(core)]
        return [Gate(core), *(reversed(pair) if swapped else pair)]

    flow = llm_flow(http_version="HTTP/2.0")
    with configured(tmp_path, parts, ordering=()) as proxy:
        run(proxy.hook("request", flow))
    wire = on_the_wire(flow)
    assert wire.headers["x-api-key"] == REAL_KEY
    assert ("content-length" in wire.headers) is not swapped


ECHO = {
    "type": "error",
    "error": {"type": "authentication_error", "message": f"invalid x-api-key {REAL_KEY}"},
}


@pytest.mark.parametrize("swapped", [False, True], ids=["in-order", "swapped"])
def test_the_meter_before_the_echo_scrub_keeps_an_echoed_credential_in_the_row(
    tmp_path: Path, swapped: bool
) -> None:
    rows: list[dict[str, object]] = []

    def keep(flow: http.HTTPFlow, call: object, reading: Reading, record: CallRecord) -> None:
        rows.append(record.row)

    def parts(core):  # type: ignore[no-untyped-def]
        credentials = Credentials(core)
        pair = [EchoScrub(core, credentials), Meter(core, before_record=[keep])]
        return [Gate(core), *(reversed(pair) if swapped else pair), credentials]

    flow = llm_flow()
    with configured(tmp_path, parts, ordering=()) as proxy:
        run(proxy.call(flow, answer(401, ECHO)))
    assert len(rows) == 1
    assert (REAL_KEY in str(rows[0]["error"])) is swapped


@pytest.mark.parametrize("swapped", [False, True], ids=["in-order", "swapped"])
def test_credentials_before_the_echo_scrub_pass_an_echoed_credential_to_the_client(
    tmp_path: Path, swapped: bool
) -> None:
    def parts(core):  # type: ignore[no-untyped-def]
        credentials = Credentials(core)
        pair = [EchoScrub(core, credentials), credentials]
        return [Gate(core), *(reversed(pair) if swapped else pair)]

    flow = llm_flow()
    with configured(tmp_path, parts, ordering=()) as proxy:
        run(proxy.call(flow, answer(400, ECHO)))
    assert flow.response is not None
    assert (REAL_KEY.encode() in (flow.response.raw_content or b"")) is swapped
