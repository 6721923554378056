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
