"""Swaps the client's placeholder key for a real upstream credential, from a pool, on the wire only.

The real credential never goes onto the flow: at the end of sluice's `request` hooks the headers to send are
registered with addons/wire_headers.py, which writes them into the request as mitmproxy sends it upstream.
mitmweb (live updates, REST API, dumps), `-w`, the console dumper, other addons, the client, the database
and the logs only ever see the placeholder and a fingerprint.

Pool policy (state/credentials.py): always the first usable credential (prompt caches live per key); 429
and 529 cool it down, 401/403 disable it. A client whose call failed because of *our* credential is told
to retry (429, short `retry-after`, `x-should-retry: true`) while another credential is usable, so its own
retry lands on the next one; sluice never retries on its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from dataclasses import dataclass, field

from mitmproxy import ctx, exceptions, http

from addons import wire_headers
from addons.core import SluiceCore, destination
from addons.decoding import readable_body
from addons.fields import with_headers
from rules.config import ConfigError, OAuth, Upstream, resolve_secret
from rules.destination import Destination, credential_refusal
from rules.envelopes import error_body
from rules.usage import read_response_body
from state import db as sluice_db
from state.credentials import (
    CredentialDead,
    CredentialEntry,
    CredentialPool,
    CredentialUnavailable,
    OAuthStore,
    TokenRefused,
    TokenResponse,
    describe_reference,
    fingerprint,
    parse_oauth_credentials,
    secrets_path_for,
)
from state.oauth_http import post_refresh

log = logging.getLogger("sluice")

OAUTH_BETA = "oauth-2025-04-20"  # Anthropic requires it on requests carrying an OAuth bearer token
RETRY_SOON_S = 1


@dataclass(slots=True)
class Swapped:
    """Which credential a call went upstream with, to judge it by the answer (and to keep it out of it)."""

    host: str
    entry: CredentialEntry
    secret: str = field(repr=False)
    delivery: wire_headers.Delivery = field(repr=False)


class Credentials:
    security = True  # addons/chain.py: a failure here fails closed (the real credential goes on here)

    def __init__(self, core: SluiceCore) -> None:
        self.core = core
        self.pool: CredentialPool | None = None
        self.oauth: OAuthStore | None = None
        self._keys: dict[tuple[str, str], str] = {}
        self._oauth_config: dict[str, OAuth] = {}
        self._sent: dict[str, Swapped] = {}  # gone upstream with a pool credential, answer pending
        wire_headers.install()

    # -- configuration -----------------------------------------------------------------------------

    def configure(self, updated: set[str]) -> None:
        if not {"sluice_config", "sluice_db"} & updated:
            return
        upstreams = [u for u in self.core.config.upstreams if u.keys or u.oauth]
        if not upstreams:
            self.pool = None
            return
        db_path = ctx.options.sluice_db
        try:
            self.pool = self.pool or CredentialPool(sluice_db.connect(db_path))
            if any(u.oauth for u in upstreams):
                self.oauth = self.oauth or OAuthStore(secrets_path_for(db_path))
            keys: dict[tuple[str, str], str] = {}
            for index, upstream in enumerate(self.core.config.upstreams):
                if upstream.keys or upstream.oauth:
                    entries = self._entries(index, upstream, keys)
                    self.pool.sync_config(upstream.host, entries)
        except (ConfigError, ValueError) as e:
            raise exceptions.OptionsError(f"sluice_config {ctx.options.sluice_config}: {e}") from None
        self._keys = keys
        self._oauth_config = {u.host: u.oauth for u in upstreams if u.oauth}

    def _entries(
        self, index: int, upstream: Upstream, keys: dict[tuple[str, str], str]
    ) -> list[CredentialEntry]:
        entries = []
        for position, reference in enumerate(upstream.keys):
            field = f"upstreams[{index}].keys[{position}]"
            secret, inline = resolve_secret(reference, field=field, base_dir=self.core.config_dir)
            if inline:
                log.warning(
                    "sluice: %s is a key written inline in the config; prefer env:NAME or file:PATH", field
                )
            value = secret.get_secret_value()
            entry = CredentialEntry(
                describe_reference(f"keys[{position}]", reference), fingerprint(value), "key"
            )
            keys[(upstream.host, entry.fingerprint)] = value
            entries.append(entry)
        if upstream.oauth is not None and self.oauth is not None:
            field = f"upstreams[{index}].oauth.credentials"
            text, inline = resolve_secret(
                upstream.oauth.credentials, field=field, base_dir=self.core.config_dir
            )
            if inline:
                raise ConfigError(f"{field}: name the credentials as file:PATH or env:NAME")
            try:
                tokens = parse_oauth_credentials(text.get_secret_value())
            except ValueError as e:
                raise ConfigError(f"{field}: {e}") from None
            self.oauth.seed(upstream.host, tokens)
            label = describe_reference("oauth", upstream.oauth.credentials)
            entries.append(CredentialEntry(label, tokens.identity, "oauth"))
        return entries

    # -- the swap ----------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live or self.pool is None:
            return
        going_to = destination(flow)
        upstream = self.core.swapping_upstream(going_to.host)
        if upstream is None:
            return
        if credential_refusal(going_to, upstream.host, upstream.port) is not None:
            return  # addons/confine.py has answered it already; a credential never goes there
        host = upstream.host
        # Each pass either returns with a credential or takes one out of the pool, so this ends.
        for _ in range(len(upstream.keys) + 2):
            choice = self.pool.choose(host)
            entry = choice.credential
            if entry is None:
                self._answer_unavailable(flow, upstream, choice.retry_after_s, choice.reasons)
                return
            try:
                secret = await self._secret(host, entry)
            except CredentialDead as e:
                await asyncio.to_thread(self.pool.disable, host, entry.fingerprint, str(e))
                continue
            except CredentialUnavailable as e:
                await asyncio.to_thread(self.pool.cool_down, host, entry.fingerprint, e.retry_after_s, str(e))
                continue
            self._swap(flow, upstream, entry, secret, going_to)
            return
        self._answer_unavailable(flow, upstream, None, ("no credential could be used",))

    async def _secret(self, host: str, entry: CredentialEntry) -> str:
        if entry.kind == "key":
            return self._keys[(host, entry.fingerprint)]
        assert self.oauth is not None  # an oauth entry exists only when the store does
        config = self._oauth_config[host]
        return await self.oauth.access_token(host, lambda token: self._refresh(config, token))

    async def oauth_token(self, host: str) -> str:
        """A valid OAuth access token of `host`'s credential, refreshed when due (the store's single-flight
        and lease rules): for sluice's own calls to the provider's OAuth endpoints, never for a client.
        Raises LookupError when `host` has no OAuth credential; CredentialDead / CredentialUnavailable as
        the store does."""
        config = self._oauth_config.get(host)
        if config is None or self.oauth is None:
            raise LookupError(f"{host} has no OAuth credential")
        return await self.oauth.access_token(host, lambda token: self._refresh(config, token))

    def _swap(
        self,
        flow: http.HTTPFlow,
        upstream: Upstream,
        entry: CredentialEntry,
        secret: str,
        going_to: Destination,
    ) -> None:
        headers = flow.request.headers
        if upstream.provider == "anthropic" and entry.kind == "key":
            changes: dict[bytes, bytes | None] = {b"x-api-key": secret.encode(), b"authorization": None}
        else:
            changes = {b"x-api-key": None, b"authorization": b"Bearer " + secret.encode()}
        if upstream.provider == "anthropic" and entry.kind == "oauth":
            betas = [b.strip() for b in headers.get("anthropic-beta", "").split(",") if b.strip()]
            if OAUTH_BETA not in betas:
                changes[b"anthropic-beta"] = ",".join([*betas, OAUTH_BETA]).encode()
        delivery = wire_headers.send_with(flow.request, with_headers(headers.fields, changes), going_to)
        self._sent[flow.id] = Swapped(upstream.host, entry, secret, delivery)
        call = self.core.calls.get(flow.id)
        if call is not None:
            call.credential = entry.label

    def _answer_unavailable(
        self, flow: http.HTTPFlow, upstream: Upstream, retry_after_s: float | None, reasons: tuple[str, ...]
    ) -> None:
        detail = "; ".join(reasons)
        if retry_after_s is not None:
            wait = max(1, math.ceil(retry_after_s))
            message = (
                f"sluice: every credential for {upstream.host} is cooling down ({detail}); retry in {wait}s"
            )
            headers = {"retry-after": str(wait), "x-should-retry": "true"}
            status = 429
        else:
            message = f"sluice: no usable credential for {upstream.host}: {detail}"
            headers = {"x-should-retry": "false"}
            status = 503
        self.core.answer(flow, upstream.provider, status, message, headers, message)
        log.warning("sluice: flow %s: %s", flow.id, message)

    # -- after the request has left ---------------------------------------------------------------

    def sent_with(self, flow: http.HTTPFlow) -> Swapped | None:
        """The credential this flow went upstream with, until its answer has been judged."""
        return self._sent.get(flow.id)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        wire_headers.forget(flow.request)  # sent by now

    async def response(self, flow: http.HTTPFlow) -> None:
        wire_headers.forget(flow.request)
        swapped = self._sent.pop(flow.id, None)
        if swapped is None or flow.response is None or self.pool is None:
            return
        if not swapped.delivery.written:
            return  # withheld at the wire (addons/wire_headers.py): the answer says nothing of the credential
        status = flow.response.status_code
        if status not in (401, 403, 429, 529):
            return
        upstream = self.core.upstream_for(swapped.host)
        if upstream is None:
            return
        message = read_response_body("messages", readable_body(flow.response), status).error
        await asyncio.to_thread(
            self.pool.report,
            swapped.host,
            swapped.entry.fingerprint,
            status,
            dict(flow.response.headers),
            message,
        )
        another = self.pool.choose(swapped.host).credential
        if another is None:
            return
        if status in (401, 403):
            # Our credential failed, not the client's: have the client retry onto the next one.
            text = (
                f"sluice: upstream credential {swapped.entry.label} was refused ({status}); "
                f"retry to use the next credential"
            )
            flow.response = http.Response.make(
                429,
                error_body(upstream.provider, 429, text),
                {
                    "content-type": "application/json",
                    "retry-after": str(RETRY_SOON_S),
                    "x-should-retry": "true",
                },
            )
        else:
            # Another credential is usable now: no need for the client to sit out this one's cooldown.
            flow.response.headers["retry-after"] = str(RETRY_SOON_S)
            flow.response.headers.pop("retry-after-ms", None)
            flow.response.headers["x-should-retry"] = "true"

    def error(self, flow: http.HTTPFlow) -> None:
        wire_headers.forget(flow.request)  # e.g. the upstream could not be reached: never sent
        self._sent.pop(flow.id, None)

    # -- OAuth refresh ----------------------------------------------------------------------------

    async def _refresh(self, config: OAuth, refresh_token: str) -> TokenResponse:
        if not config.token_url or not config.client_id:
            raise TokenRefused("not_configured", "oauth.token_url and oauth.client_id are needed to refresh")
        return await asyncio.to_thread(post_refresh, config, refresh_token, _upstream_ssl_context())


def _upstream_ssl_context() -> ssl.SSLContext:
    """The token endpoint is verified like upstream servers are (mitmproxy's upstream CA options)."""
    cafile = ctx.options.ssl_verify_upstream_trusted_ca
    context = ssl.create_default_context(cafile=cafile or None)
    if ctx.options.ssl_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
