from __future__ import annotations

import asyncio
import json

import pytest
from mitmproxy import exceptions
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHeadersHook, HttpResponseHook
from mitmproxy.test import taddons, tflow, tutils

from addons.calls import Call
from addons.chain import Chain
from addons.core import SluiceCore


class Recorder:
    def __init__(self, name: str, seen: list[str]) -> None:
        self.label, self.seen = name, seen

    def request(self, flow: object) -> None:
        self.seen.append(f"{self.label}.request")

    def response(self, flow: object) -> None:
        self.seen.append(f"{self.label}.response")


class AsyncRecorder(Recorder):
    async def request(self, flow: object) -> None:
        await asyncio.sleep(0)
        self.seen.append(f"{self.label}.request")


def test_each_hook_runs_the_parts_that_have_it_in_order_async_ones_awaited() -> None:
    seen: list[str] = []
    chain = Chain("sluice", [Recorder("a", seen), AsyncRecorder("b", seen), Recorder("c", seen)])

    async def run() -> None:
        with taddons.context(chain) as tctx:
            flow = tflow.tflow(resp=True)
            await tctx.master.addons.handle_lifecycle(HttpRequestHook(flow))
            await tctx.master.addons.handle_lifecycle(HttpResponseHook(flow))

    asyncio.run(run())
    assert seen == ["a.request", "b.request", "c.request", "a.response", "b.response", "c.response"]


def test_a_hook_no_part_has_is_not_offered_to_mitmproxy() -> None:
    chain = Chain("sluice", [Recorder("a", [])])
    assert not hasattr(chain, "responseheaders")
    assert not hasattr(chain, "addons")  # mitmproxy would walk the parts a second time


def test_lifecycle_hooks_reach_every_part_and_stay_sync() -> None:
    loaded: list[str] = []

    class Part:
        def __init__(self, name: str) -> None:
            self.label = name

        def load(self, loader: object) -> None:
            loaded.append(self.label)

    with taddons.context(Chain("sluice", [Part("a"), Part("b")])):
        pass
    assert loaded == ["a", "b"]


def test_an_async_hook_where_mitmproxy_calls_synchronously_is_refused() -> None:
    class AsyncLoad:
        async def load(self, loader: object) -> None:
            pass

    with pytest.raises(TypeError, match="async load"):
        Chain("sluice", [AsyncLoad(), AsyncLoad()])


# --- a failing part -----------------------------------------------------------------------------------------


class Broken:
    def __init__(self, hook: str = "request", *, error: Exception | None = None) -> None:
        self.error = error or RecursionError("maximum recursion depth exceeded")
        setattr(self, hook, self._fail)

    def _fail(self, flow: object) -> None:
        raise self.error


class BrokenSecurity(Broken):
    security = True


class AsyncBroken:
    async def request(self, flow: object) -> None:
        await asyncio.sleep(0)
        raise ValueError("async part failed")


def _metered_flow(core: SluiceCore) -> tflow.http.HTTPFlow:
    flow = tflow.tflow(req=tutils.treq(method=b"POST", path=b"/v1/messages", host="api.anthropic.com"))
    flow.live = True
    core.calls[flow.id] = Call(
        flow.id, "api.anthropic.com", "POST", "/v1/messages", "anthropic", "messages", 0.0
    )
    return flow


async def _request(chain: Chain, flow: tflow.http.HTTPFlow) -> None:
    with taddons.context(chain) as tctx:
        await tctx.master.addons.handle_lifecycle(HttpRequestHook(flow))


@pytest.mark.parametrize("broken", [Broken(), AsyncBroken()], ids=["sync", "async"])
def test_a_failing_part_never_skips_the_parts_after_it(
    broken: object, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    core = SluiceCore()
    chain = Chain("sluice", [core, broken, Recorder("credentials", seen)])
    flow = _metered_flow(core)
    asyncio.run(_request(chain, flow))
    assert seen == ["credentials.request"]
    assert flow.response is None  # not a security part: the request goes on
    notes = core.calls[flow.id].notes
    assert notes == [f"part failed: {type(broken).__name__}.request: {_error_name(broken)}"]
    assert any(flow.id in record.getMessage() for record in caplog.records)


def _error_name(part: object) -> str:
    return "RecursionError" if isinstance(part, Broken) else "ValueError"


def test_a_failing_security_part_fails_the_request_closed_in_the_provider_envelope() -> None:
    seen: list[str] = []
    core = SluiceCore()
    chain = Chain("sluice", [core, BrokenSecurity(), Recorder("meter", seen)])
    flow = _metered_flow(core)
    asyncio.run(_request(chain, flow))
    assert flow.response is not None and flow.response.status_code == 502
    body = json.loads(flow.response.content or b"")
    assert body["type"] == "error" and "BrokenSecurity failed" in body["error"]["message"]
    assert seen == ["meter.request"]  # the rest still run (the meter records the refusal)
    assert core.calls[flow.id].answered_locally
    assert "failed closed: BrokenSecurity failed" in core.calls[flow.id].notes


def test_a_failing_security_part_on_other_traffic_still_fails_closed() -> None:
    core = SluiceCore()
    chain = Chain("sluice", [core, BrokenSecurity()])
    flow = tflow.tflow(req=tutils.treq(host="example.com"))
    flow.live = True
    asyncio.run(_request(chain, flow))
    assert flow.response is not None and flow.response.status_code == 502


def test_a_security_part_failing_on_response_headers_kills_the_flow() -> None:
    core = SluiceCore()
    chain = Chain("sluice", [core, BrokenSecurity("responseheaders")])
    flow = _metered_flow(core)
    flow.response = tutils.tresp()

    async def run() -> None:
        with taddons.context(chain) as tctx:
            await tctx.master.addons.handle_lifecycle(HttpResponseHeadersHook(flow))

    asyncio.run(run())
    assert flow.error is not None and flow.error.msg == "Connection killed."


def test_a_security_part_failing_after_the_response_does_not_touch_it() -> None:
    core = SluiceCore()
    chain = Chain("sluice", [core, BrokenSecurity("response")])
    flow = _metered_flow(core)
    flow.response = tutils.tresp()

    async def run() -> None:
        with taddons.context(chain) as tctx:
            await tctx.master.addons.handle_lifecycle(HttpResponseHook(flow))

    asyncio.run(run())
    assert flow.response.status_code == 200 and flow.error is None


def test_a_lifecycle_error_still_stops_start_up() -> None:
    class BadOption:
        def configure(self, updated: set[str]) -> None:
            raise exceptions.OptionsError("sluice_config: no such file")

    chain = Chain("sluice", [BadOption(), Recorder("a", [])])
    with pytest.raises(exceptions.OptionsError), taddons.context(chain) as tctx:
        tctx.configure(chain)


def test_a_cancelled_hook_is_not_swallowed() -> None:
    class Cancelled:
        async def request(self, flow: object) -> None:
            raise asyncio.CancelledError

    seen: list[str] = []
    chain = Chain("sluice", [Cancelled(), Recorder("a", seen)])
    flow = tflow.tflow()
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(chain.request(flow))  # type: ignore[attr-defined]
    assert seen == []


def test_the_gate_failing_means_no_credential_is_swapped_in() -> None:
    class Gate:
        security = True

        def request(self, flow: object) -> None:
            raise KeyError("clients")

    class Credentials:
        def __init__(self) -> None:
            self.swapped = False

        def request(self, flow: tflow.http.HTTPFlow) -> None:
            if flow.response is None:  # as addons/credentials.py: only a request still on its way
                self.swapped = True

    core, credentials = SluiceCore(), Credentials()
    chain = Chain("sluice", [core, Gate(), credentials])
    flow = _metered_flow(core)
    asyncio.run(_request(chain, flow))
    assert flow.response is not None and flow.response.status_code == 502
    assert credentials.swapped is False


def test_a_part_may_say_it_is_no_security_part() -> None:
    class Headers(Broken):
        security = False

    core = SluiceCore()
    chain = Chain("sluice", [core, Headers()])
    flow = _metered_flow(core)
    asyncio.run(_request(chain, flow))
    assert flow.response is None


def test_the_parts_that_make_security_decisions_say_so() -> None:
    from addons.budget import Budget
    from addons.cache_health import CacheHealth
    from addons.confine import Confinement
    from addons.credentials import Credentials
    from addons.echo import EchoScrub
    from addons.framing import Framing
    from addons.gate import Gate
    from addons.headers import Headers
    from addons.meter import Meter
    from addons.rewrite import Rewrite

    security = [Confinement, Gate, Budget, Headers, Framing, EchoScrub, Credentials]
    assert all(cls.security is True for cls in security)
    assert not any(getattr(cls, "security", False) for cls in (Rewrite, Meter, CacheHealth))
