"""sluice's parts as one mitmproxy addon: each hook calls the parts that implement it, in order.

mitmproxy dispatches every event (four per HTTP call, plus an `update` after each) by walking every addon a
script exposes and looking each one up for the hook by name. With a dozen parts that walk cost ~0.1 ms per
call (bench/run.py), more than some of the parts themselves. `Chain` looks the parts up once, at start, and
is the only addon mitmproxy walks.

The parts run in list order; a part's hook may be async and is awaited before the next part runs (an async
hook pauses only its own flow). Which parts must run before which, and why, is data (addons/order.py): a
chain whose list breaks a pair is never built, so a misordered list stops start-up naming the pair.

A part that fails never costs the parts after it their turn: on a flow event, an exception from one part is
logged with the flow id, noted on the call's row (`note:part failed: ...`) and the next part runs. Parts
that make a security decision say so themselves, with a class attribute `security = True` (confinement,
the gate, the budget, the header allow-lists, the framing, the echo scrub, the credential swap). When
one of them raises on the request side the flow fails closed — sluice answers 502 in the provider's
envelope and the request is never forwarded (with the client's key, or unfiltered); on `responseheaders`
the flow is killed, so headers that were not filtered never reach the client. Lifecycle hooks (load,
configure, running, done) keep mitmproxy's own semantics: an error there (a bad option) must stop start-up.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mitmproxy import exceptions, http
from mitmproxy import flow as mflow

from addons import mitm_internals, order, startup
from addons.core import SluiceCore

log = logging.getLogger("sluice")

# mitmproxy calls these without an event loop to await in (`invoke_addon_sync`): they must stay sync.
SYNC_ONLY = frozenset({"load", "configure", "done"})
# Where a security part's failure must stop the request from leaving.
REQUEST_HOOKS = frozenset({"requestheaders", "request"})
# Where it must stop the response (its headers) from reaching the client.
RESPONSE_HEADER_HOOKS = frozenset({"responseheaders"})
FAILED_CLOSED = "sluice: the request could not be checked ({part} failed); it was not forwarded"


def is_security_part(part: object) -> bool:
    """Whether a part makes a security decision: it says so with `security = True`.

    Without the gate's verdict, for one, the credential swap would put a real key on an unchecked request.
    """
    return getattr(part, "security", False) is True


class Chain:
    def __init__(
        self, name: str, parts: Sequence[object], ordering: Iterable[order.Before] = order.ORDER
    ) -> None:
        order.check(parts, ordering)  # raises PartOrderError: loading the script fails, start-up stops
        self.name = name  # mitmproxy's registry name for this addon
        self.parts = list(parts)
        # hook -> the parts whose hook it calls, in order (what mitmproxy reaches through this addon)
        self.reached: dict[str, list[object]] = {}
        core = next((part for part in self.parts if isinstance(part, SluiceCore)), None)
        for hook in mitm_internals.hook_names():
            found = [(part, method) for part in self.parts if callable(method := getattr(part, hook, None))]
            if found:
                self.reached[hook] = [part for part, _ in found]
                setattr(self, hook, _dispatcher(hook, found, core))


Method = Callable[..., Any]


def _dispatcher(hook: str, found: list[tuple[object, Method]], core: SluiceCore | None) -> Method:
    methods = [method for _, method in found]
    is_async = any(inspect.iscoroutinefunction(method) for method in methods)
    if hook in SYNC_ONLY and is_async:
        raise TypeError(f"sluice: an async {hook} hook cannot run where mitmproxy calls it synchronously")
    if hook == "configure":
        return _configure_dispatcher(methods, core)
    if hook in SYNC_ONLY:
        if len(methods) == 1:
            return methods[0]

        def call_lifecycle(*args: Any) -> None:
            for method in methods:
                method(*args)

        return call_lifecycle

    def failed(part: object, args: tuple[Any, ...], error: Exception) -> None:
        flow = args[0] if args and isinstance(args[0], mflow.Flow) else None
        if flow is None:
            raise error  # not a flow event: mitmproxy's own handling (it logs the addon error)
        _contain(hook, part, flow, error, core)

    if not is_async:

        def call_all(*args: Any) -> None:
            for part, method in found:
                try:
                    method(*args)
                except Exception as e:
                    failed(part, args, e)

        return call_all

    async def await_all(*args: Any) -> None:
        for part, method in found:
            try:
                result = method(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception as e:
                failed(part, args, e)

    return await_all


def _configure_dispatcher(methods: list[Method], core: SluiceCore | None) -> Method:
    """Configure every part; an option error while mitmproxy starts from its command line is printed as
    one block and stops the process there (addons/startup.py), else it is mitmproxy's to show."""

    def configure(updated: set[str]) -> None:
        try:
            for method in methods:
                method(updated)
        except exceptions.OptionsError as e:
            if core is not None and not core.started and startup.starting_from_command_line():
                startup.exit_with(e)
            raise

    return configure


def _contain(hook: str, part: object, flow: mflow.Flow, error: Exception, core: SluiceCore | None) -> None:
    """One part failed on a flow event: log and note it; fail closed when it was a security decision."""
    name = type(part).__name__
    log.error("sluice: flow %s: %s.%s failed: %r", flow.id, name, hook, error, exc_info=error)
    call = core.calls.get(flow.id) if core is not None else None
    if call is not None:
        call.notes.append(f"part failed: {name}.{hook}: {type(error).__name__}")
    if not is_security_part(part) or not isinstance(flow, http.HTTPFlow) or not flow.live:
        return
    if hook in REQUEST_HOOKS and flow.response is None:
        _fail_closed(flow, name, core)
    elif hook in RESPONSE_HEADER_HOOKS and flow.killable:
        log.error("sluice: flow %s: response not passed on: %s.%s failed", flow.id, name, hook)
        flow.kill()


def _fail_closed(flow: http.HTTPFlow, part: str, core: SluiceCore | None) -> None:
    """Answer in sluice's name instead of forwarding a request a security part could not check."""
    message = FAILED_CLOSED.format(part=part)
    headers = {"x-should-retry": "false"}
    if core is not None and core.envelope(flow) is not None:
        core.answer(flow, 502, message, headers, f"failed closed: {part} failed")
        return
    flow.response = http.Response.make(502, message.encode(), {"content-type": "text/plain", **headers})
