from __future__ import annotations

from mitmproxy import hooks
from mitmproxy.test import taddons, tflow

from addons.core import SluiceCore
from addons.credential_mask import CredentialMask
from addons.credentials import Credentials


class FakeCredentials(Credentials):
    def __init__(self, originals: dict[str, tuple[tuple[bytes, bytes], ...]]) -> None:
        super().__init__(SluiceCore())
        self.originals = originals

    def client_headers(self, flow_id: str) -> tuple[tuple[bytes, bytes], ...] | None:
        return self.originals.get(flow_id)


def test_the_view_sees_the_client_headers_and_the_request_leaves_with_the_real_ones() -> None:
    flow = tflow.tflow()
    flow.request.headers["x-api-key"] = "sk-client"
    client = tuple(flow.request.headers.fields)
    flow.request.headers["x-api-key"] = "sk-ant-REAL"
    mask = CredentialMask(FakeCredentials({flow.id: client}))
    seen: list[str] = []

    class View:  # stands where mitmweb's view is: between the script addons and the put-back
        def update(self, flows: list[tflow.http.HTTPFlow]) -> None:
            seen.extend(f.request.headers["x-api-key"] for f in flows)

    with taddons.context() as tctx:
        tctx.master.addons.add(mask, View())
        mask.running()
        assert tctx.master.addons.chain[-1] is mask.put_back
        mask.running()  # idempotent
        assert tctx.master.addons.chain.count(mask.put_back) == 1
        tctx.master.addons.trigger(hooks.UpdateHook([flow]))
        assert seen == ["sk-client"]
        assert flow.request.headers["x-api-key"] == "sk-ant-REAL"
        assert mask.stash == {}
        mask.done()
        assert mask.put_back not in tctx.master.addons.chain


def test_flows_without_a_swap_are_left_alone() -> None:
    flow = tflow.tflow()
    flow.request.headers["x-api-key"] = "sk-own"
    mask = CredentialMask(FakeCredentials({}))
    mask.update([flow])
    assert mask.stash == {} and flow.request.headers["x-api-key"] == "sk-own"
