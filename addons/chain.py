"""sluice's parts as one mitmproxy addon: each hook calls the parts that implement it, in order.

mitmproxy dispatches every event (four per HTTP call, plus an `update` after each) by walking every addon a
script exposes and looking each one up for the hook by name. With a dozen parts that walk cost ~0.1 ms per
call (bench/run.py), more than some of the parts themselves. `Chain` looks the parts up once, at start, and
is the only addon mitmproxy walks.

Semantics are mitmproxy's own for nested addons: the parts run in list order; a part's hook may be async
and is awaited before the next part runs; an exception in one part ends that event for the parts after it
(mitmproxy logs it, as for any addon).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from mitmproxy import hooks

# mitmproxy calls these without an event loop to await in (`invoke_addon_sync`): they must stay sync.
SYNC_ONLY = frozenset({"load", "configure", "done"})


class Chain:
    def __init__(self, name: str, parts: Sequence[object]) -> None:
        self.name = name  # mitmproxy's registry name for this addon
        self.parts = list(parts)
        for hook in hooks.all_hooks:
            methods = [method for part in self.parts if callable(method := getattr(part, hook, None))]
            if methods:
                setattr(self, hook, _dispatcher(hook, methods))


def _dispatcher(hook: str, methods: list[Callable[..., Any]]) -> Callable[..., Any]:
    if len(methods) == 1:
        return methods[0]
    if not any(inspect.iscoroutinefunction(method) for method in methods):

        def call_all(*args: Any) -> None:
            for method in methods:
                method(*args)

        return call_all
    if hook in SYNC_ONLY:
        raise TypeError(f"sluice: an async {hook} hook cannot run where mitmproxy calls it synchronously")

    async def await_all(*args: Any) -> None:
        for method in methods:
            result = method(*args)
            if result is not None and inspect.isawaitable(result):
                await result

    return await_all
