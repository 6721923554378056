"""The script mitmproxy loads (addons/sluice.py): one addon, its parts in the checked order, every part
reached by the hooks it implements, and no part written but left out."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import addons.sluice as sluice
from addons import mitm_internals
from addons.chain import Chain
from addons.core import SluiceCore
from addons.ops_feed import OpsFeed
from addons.order import broken_pairs, name_of

ADDONS = Path(__file__).resolve().parents[2] / "addons"


def test_mitmproxy_sees_one_addon_named_sluice_over_the_parts() -> None:
    [chain] = sluice.addons
    assert isinstance(chain, Chain) and chain.name == "sluice"
    assert chain.parts == sluice.parts


def test_the_parts_run_in_an_order_that_keeps_every_pair() -> None:
    assert broken_pairs(sluice.parts) == []
    assert isinstance(sluice.parts[0], SluiceCore)  # creates each call's record before any part looks
    assert isinstance(sluice.parts[-1], OpsFeed)  # its done after the core's: the last rows still go out


def test_every_part_is_reached_by_each_hook_it_implements() -> None:
    [chain] = sluice.addons
    for part in sluice.parts:
        hooks = [hook for hook in mitm_internals.hook_names() if callable(getattr(part, hook, None))]
        assert hooks, f"{name_of(part)} implements no hook mitmproxy calls"
        for hook in hooks:
            assert part in chain.reached[hook], f"{name_of(part)}.{hook} is not called"
            assert callable(getattr(chain, hook))


def test_every_part_written_in_addons_is_in_the_list() -> None:
    """A class in addons/ with a mitmproxy hook is a part: one left out of the list would never run."""
    hooks = set(mitm_internals.hook_names())
    written = set()
    for path in ADDONS.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name != "Chain":
                methods = {
                    item.name
                    for item in node.body
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                }
                if methods & hooks:
                    written.add(node.name)
    assert written == {name_of(part) for part in sluice.parts}


def test_the_script_puts_the_checkout_on_the_path_before_importing_it() -> None:
    source = inspect.getsource(sluice)
    assert source.index("sys.path.insert(0, _ROOT)") < source.index("from addons")


# Hooks mitmproxy calls on a connection or a request before the request hooks, where no record exists yet.
BEFORE_THE_RECORD = (
    "client_connected",
    "http_connect",
    "http_connect_upstream",
    "requestheaders",
    "server_connect",
    "server_connected",
    "tls_clienthello",
    "tls_start_client",
    "tls_start_server",
)


def test_no_part_looks_for_a_call_record_before_the_core_creates_it() -> None:
    """The core creates each record in its `request` hook: a part reading one in an earlier hook would find
    none, and decide without it."""
    early = []
    for part in sluice.parts:
        for hook in BEFORE_THE_RECORD:
            method = getattr(part, hook, None)
            if callable(method) and ".calls" in inspect.getsource(method):
                early.append(f"{name_of(part)}.{hook}")
    assert early == []
    assert "requestheaders" not in sluice.addons[0].reached  # none acts before the body arrives
