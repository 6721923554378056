"""What mitmweb shows of sluice beyond the flow's comment: what sluice changed in each request.

`RequestChanges` runs right after the rewrite and, when the body changed, keeps the difference
(rules/json_diff.py) between the objects the rewrite parsed and produced on the flow:

    flow.metadata["sluice"] = {
        "rules": ["system_block:policy", "cache_control_cap:5->4"],   # what the rewrite applied
        "changes": [{"op": "added", "path": "system[1]", "after": "{...}"}, ...],
        "cache": {"status": "miss", "note": "prefix changed at system[2]"},   # addons/cache_health.py
        "provider": "bedrock", "billed_by": "bedrock", "region": "us-east-1",  # the row's, for the view
    }

Only strings, lists and dicts: the metadata is saved with the flow (`-w`), and the contentview
(addons/contentview.py) reads it back, from a live flow or a saved one. The request body itself is never
copied: the difference holds only what changed, each value cut to a few hundred characters.

Working out the difference costs about as much as the rewrite itself, so it is only done where it can be
seen: in mitmweb or the mitmproxy console, when flows are saved (`-w`), or when mitmdump prints bodies
(`flow_detail` 3 or more). A plain mitmdump skips it.

Under mitmweb, `RequestChanges` also adds the Comment column to the flow list (where sluice's per-call
summary and flags show) unless the user chose the columns with `--set web_columns=...`.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx, http

from addons.core import SluiceCore
from rules.json_diff import diff_json

log = logging.getLogger("sluice")

METADATA_KEY = "sluice"


def sluice_metadata(flow: http.HTTPFlow) -> dict[str, Any]:
    """The flow's sluice metadata, created empty on first use."""
    meta = flow.metadata.get(METADATA_KEY)
    if not isinstance(meta, dict):
        meta = flow.metadata[METADATA_KEY] = {}
    return meta


class RequestChanges:
    """After the rewrite: what changed in the request body, kept on the flow for the contentview."""

    def __init__(self, core: SluiceCore) -> None:
        self.core = core

    def running(self) -> None:
        options = ctx.options
        if "web_columns" in options and not options.has_changed("web_columns"):
            columns = list(options.web_columns)
            if "comment" not in columns:
                options.update(web_columns=[*columns, "comment"])

    def request(self, flow: http.HTTPFlow) -> None:
        if not self.core.flows_shown:
            return
        call = self.core.calls.get(flow.id)
        if call is None:
            return
        meta = sluice_metadata(flow)
        # Who bills the call and where it ran, for the contentview's price and title (the row says the same).
        meta["provider"], meta["billed_by"], meta["region"] = call.provider, call.billed_by, call.region
        if call.request_json_before is None or call.request_json is None:
            return
        before, after = call.request_json_before, call.request_json
        if before is after:  # the rules share what they do not change, and never mutate
            return
        try:
            changes = diff_json(before, after)
        except RecursionError as e:
            log.debug("sluice: flow %s: request change not shown: %r", flow.id, e)
            return
        meta["changes"] = [change.to_dict() for change in changes]
        meta["rules"] = list(call.rules_applied)
