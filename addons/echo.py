"""Scrubs the real credential out of an upstream's answer, if the upstream echoed it.

Runs on the response side before anything reads or keeps the answer (the meter's row, the credential pool's
reason, mitmweb, `-w`), and before it leaves for the client: headers in `responseheaders` (they leave right
after it), a buffered body in `response`. The credential is the one this flow went upstream with
(addons/credentials.py); it is replaced by its fingerprint, and the call's row notes that it was.
A streamed body (SSE: the providers' successful answers) is passed on as it arrives and not searched; a
compressed body is searched when it is an error (decoded with the cap, addons/decoding.py).
"""

from __future__ import annotations

import logging

from mitmproxy import http

from addons.core import SluiceCore
from addons.credentials import Credentials
from addons.decoding import decode_body, is_encoded
from rules.echo import scrub_secrets
from rules.secrets import fingerprint

log = logging.getLogger("sluice")

NOTE = "the upstream echoed the real credential; replaced by its fingerprint"


class EchoScrub:
    security = True  # addons/chain.py: a failure here fails closed (no echoed credential leaves)

    def __init__(self, core: SluiceCore, credentials: Credentials) -> None:
        self.core = core
        self.credentials = credentials

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        secrets = self._secrets(flow)
        if not secrets or flow.response is None:
            return
        fields = flow.response.headers.fields
        scrubbed = tuple((name, scrub_secrets(value, secrets)) for name, value in fields)
        if scrubbed != fields:
            flow.response.headers.fields = scrubbed
            self._noted(flow, "a response header")

    def response(self, flow: http.HTTPFlow) -> None:
        secrets = self._secrets(flow)
        response = flow.response
        if not secrets or response is None or response.stream or not response.raw_content:
            return
        encoding = response.headers.get("content-encoding")
        if not is_encoded(encoding):
            body: bytes | None = response.raw_content
        elif response.status_code >= 400:  # where echoes are: error messages (successes are not decoded)
            decoded = decode_body(response.raw_content, encoding)
            body = decoded.body
            if body is None:
                log.warning(
                    "sluice: flow %s: error body not searched for an echo: %s", flow.id, decoded.reason
                )
                return
        else:
            return
        scrubbed = scrub_secrets(body, secrets)
        if scrubbed is not body:
            response.content = scrubbed  # encoded again as the header says, with its Content-Length
            self._noted(flow, "the response body")

    def _secrets(self, flow: http.HTTPFlow) -> list[tuple[bytes, bytes]]:
        swapped = self.credentials.sent_with(flow)
        if swapped is None:
            return []
        secret = swapped.secret.encode("utf-8", "surrogateescape")
        return [(secret, f"[credential {fingerprint(swapped.secret)}]".encode())]

    def _noted(self, flow: http.HTTPFlow, where: str) -> None:
        log.warning("sluice: flow %s: %s in %s", flow.id, NOTE, where)
        call = self.core.calls.get(flow.id)
        if call is not None and NOTE not in call.notes:
            call.notes.append(NOTE)
