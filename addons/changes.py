"""What mitmweb shows of sluice beyond the flow's comment: what sluice changed in each request.

`KeepOriginal` runs before the rewrite and holds the request body as the client sent it; `RequestChanges`
runs right after and, when the body changed, keeps the difference (rules/json_diff.py) on the flow:

    flow.metadata["sluice"] = {
        "rules": ["system_block:policy", "cache_control_cap:5->4"],   # what the rewrite applied
        "changes": [{"op": "added", "path": "system[1]", "after": "{...}"}, ...],
        "cache": {"status": "miss", "note": "prefix changed at system[2]"},   # addons/cache_health.py
    }

Only strings, lists and dicts: the metadata is saved with the flow (`-w`), and the contentview
(addons/contentview.py) reads it back, from a live flow or a saved one. The request body itself is never
copied: the difference holds only what changed, each value cut to a few hundred characters.

Under mitmweb, `RequestChanges` also adds the Comment column to the flow list (where sluice's per-call
summary and flags show) unless the user chose the columns with `--set web_columns=...`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mitmproxy import ctx, http

from addons.core import SluiceCore
from rules.endpoints import classify
from rules.json_diff import diff_json

log = logging.getLogger("sluice")

METADATA_KEY = "sluice"


def sluice_metadata(flow: http.HTTPFlow) -> dict[str, Any]:
    """The flow's sluice metadata, created empty on first use."""
    meta = flow.metadata.get(METADATA_KEY)
    if not isinstance(meta, dict):
        meta = flow.metadata[METADATA_KEY] = {}
    return meta


class KeepOriginal:
    """Before the rewrite: the request body as the client sent it (a reference, not a copy)."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live:
            return
        if classify(flow.request.method, flow.request.path) is not None and flow.request.raw_content:
            self.bodies[flow.id] = flow.request.raw_content


class RequestChanges:
    """After the rewrite: what changed in the request body, kept on the flow for the contentview."""

    def __init__(self, core: SluiceCore, original: KeepOriginal) -> None:
        self.core = core
        self.original = original

    def running(self) -> None:
        options = ctx.options
        if "web_columns" in options and not options.has_changed("web_columns"):
            columns = list(options.web_columns)
            if "comment" not in columns:
                options.update(web_columns=[*columns, "comment"])

    def request(self, flow: http.HTTPFlow) -> None:
        before = self.original.bodies.pop(flow.id, None)
        after = flow.request.raw_content
        if before is None or after is None or after is before or after == before:
            return
        call = self.core.calls.get(flow.id)
        try:
            changes = diff_json(json.loads(before), json.loads(after))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            log.debug("sluice: flow %s: request change not shown: %r", flow.id, e)
            return
        meta = sluice_metadata(flow)
        meta["changes"] = [change.to_dict() for change in changes]
        if call is not None:
            meta["rules"] = list(call.rules_applied)

    def error(self, flow: http.HTTPFlow) -> None:
        self.original.bodies.pop(flow.id, None)
