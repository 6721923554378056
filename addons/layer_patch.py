"""Wrapping a method of mitmproxy's protocol layers, where sluice needs a say and mitmproxy has no hook.

Used for what is written to the client when the upstream fails before answering (addons/upstream_errors.py)
and for the headers a request carries on the wire (addons/wire_headers.py). A wrapper is put on once per
process: mitmproxy reloads a changed script, and the addon it builds again must not wrap its own wrapper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Method = Callable[..., Any]


def patch_once(layer: type, method: str, wrap: Callable[[Method], Method]) -> None:
    """Replace `layer.method` with `wrap(original)`, unless this `wrap` already did."""
    original = getattr(layer, method)
    marker = f"{wrap.__module__}.{wrap.__qualname__}"
    if getattr(original, "_sluice_patch", None) == marker:
        return
    wrapped = wrap(original)
    wrapped._sluice_patch = marker  # type: ignore[attr-defined]
    setattr(layer, method, wrapped)
