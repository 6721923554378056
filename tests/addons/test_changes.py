from __future__ import annotations

import json

from mitmproxy.test import taddons, tflow, tutils

from addons.calls import Call
from addons.changes import METADATA_KEY, RequestChanges, sluice_metadata
from addons.core import SluiceCore
from rules.rewrite import parse_json

BODY = {"model": "claude-sonnet-4-5", "system": [{"type": "text", "text": "a"}], "messages": []}


def live_flow(body: bytes, path: bytes = b"/v1/messages") -> tflow.http.HTTPFlow:
    flow = tflow.tflow(req=tutils.treq(method=b"POST", path=path, content=body))
    flow.live = True
    return flow


def run(
    body: bytes, rewritten: bytes | None, path: bytes = b"/v1/messages", *, shown: bool = True
) -> tflow.http.HTTPFlow:
    """What the rewrite step leaves: the parsed body before and after (one object if unchanged)."""
    core = SluiceCore()
    core.flows_shown = shown
    changes = RequestChanges(core)
    flow = live_flow(body, path)
    call = core.calls[flow.id] = Call(flow.id, "h", "POST", "/v1/messages", "anthropic", "messages", 0.0)
    call.rules_applied.append("system_block:policy")
    try:
        call.request_json_before = parse_json(body.decode())
    except ValueError:
        pass  # the rewrite could not read it either
    else:
        after = parse_json(rewritten.decode()) if rewritten is not None else None
        call.request_json = after if after is not None else call.request_json_before
    changes.request(flow)
    return flow


def test_a_rewritten_body_keeps_its_differences_on_the_flow() -> None:
    after = {**BODY, "system": [*BODY["system"], {"type": "text", "text": "policy"}], "max_tokens": 4096}
    flow = run(json.dumps(BODY).encode(), json.dumps(after).encode())
    assert flow.metadata[METADATA_KEY] == {
        "provider": "anthropic",
        "billed_by": None,
        "region": None,
        "changes": [
            {"op": "added", "path": "system[1]", "after": '{"type":"text","text":"policy"}'},
            {"op": "added", "path": "max_tokens", "after": "4096"},
        ],
        "rules": ["system_block:policy"],
    }


def test_an_untouched_body_leaves_no_changes_only_who_serves_it() -> None:
    flow = run(json.dumps(BODY).encode(), None)
    assert flow.metadata[METADATA_KEY] == {"provider": "anthropic", "billed_by": None, "region": None}


def test_a_body_that_is_not_json_is_not_diffed() -> None:
    flow = run(b"not json", b"still not json")
    assert "changes" not in flow.metadata[METADATA_KEY]


def test_numbers_are_shown_as_the_client_wrote_them() -> None:
    flow = run(
        b'{"model":"m","temperature":0.10,"messages":[]}',
        b'{"model":"m","temperature":0.10,"messages":[],"max_tokens":1e3}',
    )
    assert flow.metadata[METADATA_KEY]["changes"] == [{"op": "added", "path": "max_tokens", "after": "1e3"}]


def test_sluice_metadata_replaces_a_foreign_value() -> None:
    flow = tflow.tflow()
    flow.metadata[METADATA_KEY] = "something else"
    sluice_metadata(flow)["cache"] = {"status": "hit"}
    assert flow.metadata[METADATA_KEY] == {"cache": {"status": "hit"}}


def test_mitmweb_gets_the_comment_column_unless_columns_were_chosen() -> None:
    changes = RequestChanges(SluiceCore())
    with taddons.context(changes) as tctx:
        tctx.options.add_option("web_columns", list, ["path", "status"], "columns")  # as mitmweb declares it
        changes.running()
        assert tctx.options.web_columns == ["path", "status", "comment"]
    with taddons.context(changes) as tctx:
        tctx.options.add_option("web_columns", list, ["path"], "columns")
        tctx.options.web_columns = ["size"]
        changes.running()
        assert tctx.options.web_columns == ["size"]
    with taddons.context(changes):
        changes.running()  # mitmdump: no such option, nothing happens


def test_the_changes_survive_a_saved_flow() -> None:
    import io

    from mitmproxy import io as flow_io

    after = {**BODY, "max_tokens": 4096}
    flow = run(json.dumps(BODY).encode(), json.dumps(after).encode())
    buffer = io.BytesIO()
    flow_io.FlowWriter(buffer).add(flow)
    buffer.seek(0)
    [loaded] = list(flow_io.FlowReader(buffer).stream())
    assert loaded.metadata[METADATA_KEY] == flow.metadata[METADATA_KEY]


def test_nothing_is_worked_out_where_no_one_can_see_it() -> None:
    after = {**BODY, "max_tokens": 4096}
    flow = run(json.dumps(BODY).encode(), json.dumps(after).encode(), shown=False)
    assert METADATA_KEY not in flow.metadata
