from __future__ import annotations

from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from addons.core import SluiceCore, connect_lazily


def test_sluice_connects_upstream_lazily_by_default() -> None:
    with taddons.context(Proxyserver()) as tctx:
        assert tctx.options.connection_strategy == "eager"  # mitmproxy's own default
        tctx.master.addons.add(SluiceCore())
        assert tctx.options.connection_strategy == "lazy"


def test_an_explicit_connection_strategy_wins_even_when_it_is_mitmproxys_default() -> None:
    with taddons.context(Proxyserver()) as tctx:
        tctx.options.update(connection_strategy="eager")  # as `--set connection_strategy=eager` does
        connect_lazily(tctx.options)
        assert tctx.options.connection_strategy == "eager"


def test_without_the_option_nothing_happens() -> None:
    with taddons.context() as tctx:
        connect_lazily(tctx.options)
        assert "connection_strategy" not in tctx.options


def test_flows_are_shown_by_a_ui_when_saved_or_printed_not_by_a_plain_mitmdump(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    async def shown(*settings: str) -> bool:
        master = DumpMaster(options.Options(), with_termlog=False, with_dumper=True)
        core = SluiceCore()
        master.addons.add(core)
        if settings:
            master.options.set(*settings)
        core.configure(set())
        return core.flows_shown

    assert asyncio.run(shown()) is False
    assert asyncio.run(shown("flow_detail=2")) is False  # request lines and headers only
    assert asyncio.run(shown("flow_detail=3")) is True  # bodies printed through the LLM contentview
    assert asyncio.run(shown(f"save_stream_file={tmp_path / 'flows'}")) is True
    with taddons.context() as tctx:  # any other master: mitmweb, the console
        core = SluiceCore()
        tctx.master.addons.add(core)
        core.configure(set())
        assert core.flows_shown is True
