"""Keeps the real upstream credential out of mitmweb's live flow updates.

mitmproxy follows every lifecycle hook with an `update` hook, and mitmweb's view answers it by sending the
flow — request headers included — to every open browser tab. The update after `request` comes while the
real credential is on the request (addons/credentials.py swaps it in at the end of `request` and takes it
off again in `responseheaders`), so a tab open during the call would receive the real key.

`CredentialMask.update`, a script addon and so run before the view's, puts the client's own headers back
for as long as the view looks; `_PutBack.update`, added at the very end of mitmproxy's addon chain (after the
view), restores the swapped headers before the request is sent. Nothing else sees the difference: both run
inside the same `update` dispatch.
"""

from __future__ import annotations

from collections.abc import Sequence

from mitmproxy import ctx, flow, http

from addons.credentials import Credentials


class _PutBack:
    name = "sluice_credential_put_back"

    def __init__(self, mask: CredentialMask) -> None:
        self.mask = mask

    def update(self, flows: Sequence[flow.Flow]) -> None:
        for one in flows:
            fields = self.mask.stash.pop(one.id, None)
            if fields is not None and isinstance(one, http.HTTPFlow):
                one.request.headers.fields = fields


class CredentialMask:
    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self.stash: dict[str, tuple[tuple[bytes, bytes], ...]] = {}
        self.put_back = _PutBack(self)

    def running(self) -> None:
        addons = ctx.master.addons
        if addons.get(_PutBack.name) is None:
            addons.add(self.put_back)

    def done(self) -> None:
        # A reloaded script brings a new mask; the old one's partner must not stay in the chain.
        if ctx.master.addons.get(_PutBack.name) is self.put_back:
            ctx.master.addons.remove(self.put_back)

    def update(self, flows: Sequence[flow.Flow]) -> None:
        for one in flows:
            if not isinstance(one, http.HTTPFlow):
                continue
            original = self.credentials.client_headers(one.id)
            if original is not None and one.request.headers.fields != original:
                self.stash[one.id] = one.request.headers.fields
                one.request.headers.fields = original
