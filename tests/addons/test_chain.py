from __future__ import annotations

import asyncio

import pytest
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import taddons, tflow

from addons.chain import Chain


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
