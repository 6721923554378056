"""Swaps the client's placeholder key for a real upstream credential, from a pool, on the wire only.

The real credential never goes onto the flow: at the end of sluice's `request` hooks the headers to send are
registered with addons/wire_headers.py, which writes them into the request as mitmproxy sends it upstream.
mitmweb (live updates, REST API, dumps), `-w`, the console dumper, other addons, the client, the database
and the logs only ever see the placeholder and a fingerprint.

Pool policy (state/pool.py): a conversation stays on the credential that holds its prompt cache; new
ones start where the provider reports the most headroom (`routing = "first"` per upstream: always the first
usable one). Each answer is judged by class (rules/provider_answers.py): a rate limit cools the key until its
reset, a spent subscription window rests it until the window resets, a terminal refusal disables it, an
overloaded provider cools nothing and feeds a provider-wide breaker, and a refused OAuth access token is
dropped and refreshed (the credential dies only when its replacement is refused too). A client whose call
failed because of *our* credential is told to retry (429, short `retry-after`, `x-should-retry: true`) when a
retry can succeed, so its own retry lands on the next (or refreshed) credential; sluice never retries on its
own. While the breaker is open, sluice answers for the provider with its retry time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from botocore.credentials import ReadOnlyCredentials
from mitmproxy import ctx, exceptions, http

from addons import sigv4, wire_headers
from addons.core import SluiceCore, destination, speaks
from addons.decoding import OFF_LOOP_BYTES, decode_body, readable_body
from addons.fields import Fields, rate_limit_values, with_headers
from rules.cache_health import affinity_key
from rules.config import AwsCredentials, ConfigError, OAuth, Upstream, resolve_secret
from rules.credential_files import OAuthTokens, TokenResponse, parse_oauth_credentials
from rules.destination import Destination, credential_refusal
from rules.provider_answers import (
    MAX_ERROR_BODY,
    Breaker,
    Verdict,
    class_words,
    client_wrote,
    judge_answer,
    read_error,
)
from rules.providers import host_region, wire_format
from rules.secrets import describe_reference, fingerprint, scrub
from state import google_token
from state.aws_credentials import AwsCredentialSource, credential_source
from state.oauth import CredentialDead, CredentialUnavailable, OAuthStore, RejectOutcome, TokenRefused
from state.oauth_http import post_refresh
from state.pool import CredentialEntry, CredentialPool
from state.store import AnyStore

log = logging.getLogger("sluice")

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
        self._store: AnyStore | None = None  # the store the pool's connection and the OAuth store came from
        self._keys: dict[tuple[str, str], str] = {}
        self._oauth_config: dict[str, OAuth] = {}
        self._mint_sources: dict[str, str | None] = {}  # host -> key file text (None: the platform's own)
        self._aws_sources: dict[str, tuple[AwsCredentialSource, str]] = {}  # host -> source, row label
        self._sent: dict[str, Swapped] = {}  # gone upstream with a pool credential, answer pending
        self._breakers: dict[str, Breaker] = {}  # per upstream host: the provider's overload
        self._background: set[asyncio.Task[None]] = set()  # history writes in flight, kept until done
        # Those writes wait for the database while another process writes to it; they serialize on the pool's
        # lock anyway. One thread of their own, so that they never hold every worker of the loop's default
        # executor, where the budget's admission, the OAuth store and the meter's decoding run.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-credential-history")
        wire_headers.install()

    # -- configuration -----------------------------------------------------------------------------

    def configure(self, updated: set[str]) -> None:
        if "sluice_config" not in updated and self.core.store is self._store:
            return
        self._aws_sources = self._aws_credential_sources()
        upstreams = [u for u in self.core.config.upstreams if u.swaps]
        if not upstreams:
            self.pool = None
            return
        store = self.core.store
        if store is None:
            raise exceptions.OptionsError("sluice_db: no database is open yet")
        try:
            if self.pool is None or store is not self._store:
                self.pool = CredentialPool(store.connect(), reconnect=store.connect)
            if any(u.oauth for u in upstreams) and (self.oauth is None or store is not self._store):
                # SQLite: the 0600 secrets file beside the database; PostgreSQL: the sluice_secrets schema.
                self.oauth = OAuthStore(store, on_event=self._oauth_event)
            self._store = store
            keys: dict[tuple[str, str], str] = {}
            for index, upstream in enumerate(self.core.config.upstreams):
                if upstream.aws is not None:
                    # One key pair, named by where it comes from (its fingerprint is of that, never a secret).
                    label = self._aws_sources[upstream.host][1]
                    self.pool.sync_config(upstream.host, [CredentialEntry(label, fingerprint(label), "aws")])
                elif upstream.keys or upstream.oauth:
                    entries = self._entries(index, upstream, keys)
                    self.pool.sync_config(upstream.host, entries)
        except (ConfigError, ValueError) as e:
            raise exceptions.OptionsError(f"sluice_config {ctx.options.sluice_config}: {e}") from None
        self._keys = keys
        self._oauth_config = {u.host: u.oauth for u in upstreams if u.oauth}

    def _aws_credential_sources(self) -> dict[str, tuple[AwsCredentialSource, str]]:
        """Each upstream's real AWS credentials (`aws`), and the label its rows name them by."""
        found = {}
        for index, upstream in enumerate(self.core.config.upstreams):
            if upstream.aws is None:
                continue
            field = f"upstreams[{index}].aws"
            try:
                source = credential_source(upstream.aws, field=field, base_dir=self.core.config_dir)
            except ConfigError as e:
                raise exceptions.OptionsError(f"sluice_config {ctx.options.sluice_config}: {e}") from None
            found[upstream.host] = (source, aws_label(upstream.aws))
        return found

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
            if upstream.oauth.mint is not None:
                tokens = self._mint_source(upstream.host, upstream.oauth, field)
            else:
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

    def _mint_source(self, host: str, config: OAuth, field: str) -> OAuthTokens:
        """What an access token minted in the proxy is made from (`oauth.mint`): kept in memory only, and
        the store's seed naming it. The seed holds no token yet: the first call mints one."""
        reference = config.credentials
        text: str | None = None
        if reference != google_token.DEFAULT:
            if not reference.startswith(("file:", "env:")):
                raise ConfigError(f"{field}: name the key file as file:PATH or env:NAME, or say `default`")
            refuse_shared_file(reference, field, self.core.config_dir)
            text = resolve_secret(reference, field=field, base_dir=self.core.config_dir)[0].get_secret_value()
            try:
                google_token.check_credentials(text)
            except ValueError as e:
                raise ConfigError(f"{field}: {e}") from None
        self._mint_sources[host] = text
        return OAuthTokens(access_token="", refresh_token=google_token.identity(text), expires_at=0.0)

    # -- the swap ----------------------------------------------------------------------------------

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live:
            return
        going_to = destination(flow)
        upstream = self.core.swapping_upstream(going_to.host)
        if upstream is None:
            return
        if credential_refusal(going_to, upstream.host, upstream.port) is not None:
            return  # addons/confine.py has answered it already; a credential never goes there
        host = upstream.host
        if self.pool is None:
            return
        breaker = self._breakers.get(host)
        open_for = breaker.open_for(time.monotonic()) if breaker is not None else None
        if open_for is not None:
            self._answer_overloaded(flow, upstream, open_for)
            return
        conversation = await self._conversation(flow) if upstream.routing == "affinity" else None
        # Each pass either returns with a credential or takes one out of the pool, so this ends.
        for _ in range(len(upstream.keys) + 2):
            choice = self.pool.choose(host, conversation, upstream.routing)
            entry = choice.credential
            if entry is None:
                self._answer_unavailable(flow, upstream, choice.retry_after_s, choice.reasons)
                return
            if entry.kind == "aws":
                await self._sign(flow, upstream, entry, going_to)
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
            if conversation is not None and choice.pin:
                self._in_background(self.pool.pin, host, conversation, entry, choice.moved_from)
            return
        self._answer_unavailable(flow, upstream, None, ("no credential could be used",))

    async def _conversation(self, flow: http.HTTPFlow) -> str | None:
        """The conversation a call belongs to, for routing; None when it names none."""
        call = self.core.calls.get(flow.id)
        if call is None:
            return None
        if call.session_id or len(flow.request.raw_content or b"") < OFF_LOOP_BYTES:
            return affinity_key(call.session_id, call.client, wire_format(call.api), call.request_json)
        # Digesting a large first message takes milliseconds: off the loop (it is pure).
        wire = wire_format(call.api)
        return await asyncio.to_thread(affinity_key, None, call.client, wire, call.request_json)

    async def _secret(self, host: str, entry: CredentialEntry) -> str:
        if entry.kind == "key":
            return self._keys[(host, entry.fingerprint)]
        return await self.oauth_token(host)

    async def oauth_token(self, host: str) -> str:
        """A valid OAuth access token of `host`'s credential, refreshed when due (the store's single-flight
        and lease rules): for sluice's own calls to the provider's OAuth endpoints, never for a client.
        Raises LookupError when `host` has no OAuth credential; CredentialDead / CredentialUnavailable as
        the store does."""
        config = self._oauth_config.get(host)
        if config is None or self.oauth is None:
            raise LookupError(f"{host} has no OAuth credential")
        return await self.oauth.access_token(host, lambda token: self._refresh(host, config, token))

    def _swap(
        self,
        flow: http.HTTPFlow,
        upstream: Upstream,
        entry: CredentialEntry,
        secret: str,
        going_to: Destination,
    ) -> None:
        headers = flow.request.headers
        provider = speaks(upstream)
        if provider.key_query is not None and provider.key_query in flow.request.query:
            # The client's key in the URL: the real one goes in a header, and no key travels in a URL.
            del flow.request.query[provider.key_query]
        changes = provider.write_credential(headers, secret, entry.kind)
        delivery = wire_headers.send_with(flow.request, with_headers(headers.fields, changes), going_to)
        self._sent[flow.id] = Swapped(upstream.host, entry, secret, delivery)
        call = self.core.calls.get(flow.id)
        if call is not None:
            call.credential = entry.label

    async def _sign(
        self, flow: http.HTTPFlow, upstream: Upstream, entry: CredentialEntry, going_to: Destination
    ) -> None:
        """Have the request signed with the upstream's real AWS credentials as it is written to the upstream
        connection (SigV4 by botocore, over the body and headers as they leave, after every rule): the
        client's own signature never goes upstream, and the real one never goes onto the flow. The answer
        is judged like any credential's (a throttled key pair rests in the pool)."""
        source, label = self._aws_sources[upstream.host]
        service = speaks(upstream).sigv4_service
        region = host_region(upstream.host)
        if service is None or region is None:
            message = f"sluice: {upstream.host} takes no SigV4 signature sluice can make"
            self.core.answer(flow, 503, message, {"x-should-retry": "false"}, message)
            return
        try:
            # botocore may call STS for a role's session: off the event loop, and before the send.
            credentials = await asyncio.to_thread(source.current)
        except Exception as e:  # STS refused or unreachable, a profile gone: the call cannot be signed
            message = f"sluice: no AWS credentials for {upstream.host}: {scrub(str(e))}"
            self.core.answer(flow, 503, message, {"x-should-retry": "true", "retry-after": "5"}, message)
            log.warning("sluice: flow %s: %s", flow.id, message)
            return
        signer = partial(_sigv4_fields, credentials, service, region)
        delivery = wire_headers.send_with(flow.request, signer, going_to)
        self._sent[flow.id] = Swapped(upstream.host, entry, credentials.secret_key, delivery)
        call = self.core.calls.get(flow.id)
        if call is not None:
            call.credential = label

    def _answer_overloaded(self, flow: http.HTTPFlow, upstream: Upstream, open_for: float) -> None:
        wait = max(1, math.ceil(open_for))
        message = f"sluice: {upstream.host} said it is overloaded; not sending more for {wait}s (retry then)"
        status = speaks(upstream).overloaded_status
        headers = {"retry-after": str(wait), "x-should-retry": "true"}
        self.core.answer(flow, status, message, headers, message)

    def _answer_unavailable(
        self, flow: http.HTTPFlow, upstream: Upstream, retry_after_s: float | None, reasons: tuple[str, ...]
    ) -> None:
        detail = "; ".join(reasons)
        if retry_after_s is not None:
            wait = max(1, math.ceil(retry_after_s))
            every = all(": cooling for " in reason for reason in reasons)
            what = "every credential is cooling down" if every else "no credential is usable now"
            message = f"sluice: {upstream.host}: {what} ({detail}); retry in {wait}s"
            headers = {"retry-after": str(wait), "x-should-retry": "true"}
            status = 429
        else:
            message = f"sluice: no usable credential for {upstream.host}: {detail}"
            headers = {"x-should-retry": "false"}
            status = 503
        self.core.answer(flow, status, message, headers, message)
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
        upstream = self.core.upstream_for(swapped.host)
        if upstream is None:
            return
        limits = rate_limit_values(flow.response.headers.fields)
        status = flow.response.status_code
        now = time.time()
        if status < 400:
            self._note(swapped.host, swapped.entry.fingerprint, limits)
            self._note_success(swapped)
            return
        # An error envelope is small: a larger body is not one, and is not decoded on the loop to find out.
        speaker = speaks(upstream)
        type_header = speaker.error_type_header
        error = read_error(
            readable_body(flow.response, MAX_ERROR_BODY),
            flow.response.headers.get(type_header) if type_header else None,
        )
        echoed = await self._echoed(flow.request, class_words(speaker, error))
        verdict = judge_answer(speaker, status, limits, error, swapped.entry.kind, now, echoed)
        if verdict.action not in ("cool", "window"):
            # A rest outlasts the limit it is for: what this answer says of the room left is old news by
            # the time the key is used again (and would keep new conversations off it for good).
            self._note(swapped.host, swapped.entry.fingerprint, limits)
        if verdict.action == "overloaded":
            self._note_overload(swapped.host, verdict)
            return
        if verdict.action == "none":
            return
        if verdict.action == "reauth":
            outcome = await self._reject_token(swapped, verdict)
            if outcome != "dead":
                self._retry_soon(
                    flow,
                    upstream,
                    f"sluice: the OAuth access token of {swapped.entry.label} was refused ({status}); "
                    f"it is being refreshed: retry",
                )
                return
        else:
            await asyncio.to_thread(self.pool.apply, swapped.host, swapped.entry.fingerprint, verdict, now)
        another = self.pool.choose(swapped.host).credential
        if another is None:
            return  # nothing else to try: the client gets the provider's own answer
        if verdict.action in ("disable", "reauth"):
            # Our credential failed, not the client's: have the client retry onto the next one.
            self._retry_soon(
                flow,
                upstream,
                f"sluice: upstream credential {swapped.entry.label} was refused ({status}); "
                f"retry to use the next credential",
            )
        else:
            # Another credential is usable now: no need for the client to sit out this one's rest.
            flow.response.headers["retry-after"] = str(RETRY_SOON_S)
            flow.response.headers.pop("retry-after-ms", None)
            flow.response.headers["x-should-retry"] = "true"

    async def _echoed(self, request: http.Request, words: tuple[str, ...]) -> frozenset[str]:
        """Which words of the provider's error the client wrote itself (rules/provider_answers.py
        `client_wrote`): a client must not rest or disable a shared credential by having the provider
        repeat them. Off the loop: the request may be large; it runs only when such words are there."""
        if not words:
            return frozenset()
        raw, coding = request.raw_content or b"", request.headers.get("content-encoding")
        texts = [urllib.parse.unquote(request.path), *request.headers.values(multi=True)]

        def read() -> frozenset[str]:
            return client_wrote(words, decode_body(raw, coding).body, texts)

        return await asyncio.to_thread(read)

    def _retry_soon(self, flow: http.HTTPFlow, upstream: Upstream, text: str) -> None:
        flow.response = http.Response.make(
            429,
            speaks(upstream).error_body(429, text, None),
            {"content-type": "application/json", "retry-after": str(RETRY_SOON_S), "x-should-retry": "true"},
        )

    async def _reject_token(self, swapped: Swapped, verdict: Verdict) -> RejectOutcome:
        """A refused OAuth access token: drop it and refresh, or, when it cannot heal, disable it."""
        assert self.oauth is not None and self.pool is not None  # an oauth entry exists only with both
        outcome = await asyncio.to_thread(self.oauth.reject, swapped.host, swapped.secret, verdict.reason)
        if outcome == "dead":
            status = await asyncio.to_thread(self.oauth.status, swapped.host)
            reason = status.failed_reason if status and status.failed_reason else scrub(verdict.reason)
            await asyncio.to_thread(self.pool.disable, swapped.host, swapped.entry.fingerprint, reason)
            log.error(
                "sluice: OAuth credential %s for %s is dead: %s", swapped.entry.label, swapped.host, reason
            )
        else:
            log.warning(
                "sluice: the provider refused the OAuth access token of %s for %s; refreshing it",
                swapped.entry.label,
                swapped.host,
            )
        return outcome

    def note_oauth_limits(self, host: str, headers: Mapping[str, str]) -> None:
        """What a reading of `host`'s OAuth usage endpoint (addons/quota_poll.py) says of its limits, for
        routing as the headers of an answer would."""
        fingerprint = self.pool.oauth_fingerprint(host) if self.pool is not None else None
        if fingerprint is not None:
            self._note(host, fingerprint, headers)

    def _note(self, host: str, fingerprint: str, headers: Mapping[str, str]) -> None:
        """What an answer says of a credential's limits: written only when it is news (memory check)."""
        assert self.pool is not None
        news = self.pool.limits_news(host, fingerprint, headers)
        if news is not None:
            self._in_background(self.pool.record_limits, host, fingerprint, *news)

    def _note_success(self, swapped: Swapped) -> None:
        assert self.pool is not None
        host, fingerprint = swapped.host, swapped.entry.fingerprint
        breaker = self._breakers.get(host)
        if breaker is not None and breaker.succeeded(time.monotonic()):
            self._in_background(self.pool.record_event, host, "overload_over", "the provider answers again")
        if self.pool.needs_recovery(host, fingerprint):
            self._in_background(self.pool.recover, host, fingerprint)
        if swapped.entry.kind == "oauth" and self.oauth is not None and self.oauth.needs_confirm(host):
            self._in_background(self.oauth.confirm, host, swapped.secret)

    def _note_overload(self, host: str, verdict: Verdict) -> None:
        """An overloaded provider is no key's fault: count it on the provider-wide breaker, cool nothing."""
        assert self.pool is not None
        breaker = self._breakers.setdefault(host, Breaker())
        opened = breaker.overloaded(time.monotonic(), verdict.seconds)
        if opened is not None:
            # The provider's words, as one short printable line: they go into the log as well.
            said = scrub(verdict.reason, 200)
            detail = f"{said}: answering clients for {math.ceil(opened)}s instead of sending more"
            log.warning("sluice: %s is overloaded; %s", host, detail)
            self._in_background(self.pool.record_event, host, "overloaded", detail)

    def _in_background(self, fn: Callable[..., object], *args: object) -> None:
        """Run a history or routing write off the event loop, without making the call wait for it."""

        async def run() -> None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._writer, partial(fn, *args))
            except Exception as e:  # fails open: the history is not worth a call
                log.warning("sluice: could not record credential state (%s)", e)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _oauth_event(self, key: str, event: str, detail: str) -> None:
        if self.pool is not None:
            self.pool.record_event(key, event, detail, fingerprint=self.pool.oauth_fingerprint(key))

    def error(self, flow: http.HTTPFlow) -> None:
        wire_headers.forget(flow.request)  # e.g. the upstream could not be reached: never sent
        self._sent.pop(flow.id, None)

    # -- OAuth refresh ----------------------------------------------------------------------------

    async def _refresh(self, host: str, config: OAuth, refresh_token: str) -> TokenResponse:
        if config.mint is not None:
            return await asyncio.to_thread(google_token.mint, self._mint_sources[host], upstream_verify())
        if not config.token_url or not config.client_id:
            raise TokenRefused("not_configured", "oauth.token_url and oauth.client_id are needed to refresh")
        return await asyncio.to_thread(post_refresh, config, refresh_token, upstream_ssl_context())


def upstream_verify() -> str | bool:
    """The same verification for a `requests` session: the CA file, True (the system's), or False."""
    if ctx.options.ssl_insecure:
        return False
    return str(ctx.options.ssl_verify_upstream_trusted_ca or "") or True


def refuse_shared_file(reference: str, field: str, base_dir: Path | None) -> None:
    """A key file others may read is refused (fails closed): a private key is for this proxy's user only."""
    if not reference.startswith("file:"):
        return
    path = Path(reference[5:]).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise ConfigError(f"{field}: cannot read {path}: {e.strerror or e}") from None
    if mode & 0o077:
        raise ConfigError(f"{field}: {path} is readable by others (mode {mode & 0o777:o}); chmod 600 it")


def upstream_ssl_context() -> ssl.SSLContext:
    """The token endpoint is verified like upstream servers are (mitmproxy's upstream CA options)."""
    cafile = ctx.options.ssl_verify_upstream_trusted_ca
    context = ssl.create_default_context(cafile=cafile or None)
    if ctx.options.ssl_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _sigv4_fields(
    credentials: ReadOnlyCredentials, service: str, region: str, request: http.Request
) -> Fields:
    """The headers a request is written upstream with: its own, less the client's signature, signed for
    `service` in `region` with the real credentials over its body as it is sent (addons/sigv4.py)."""
    signed = sigv4.resign(
        method=request.method,
        url=f"https://{request.host}{request.path}",
        headers={name: value for name, value in request.headers.items()},
        body=request.raw_content or b"",
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        token=credentials.token,
        service=service,
        region=region,
    )
    return tuple((name.encode(), value.encode()) for name, value in signed.items())


def aws_label(settings: AwsCredentials) -> str:
    """How a row names an upstream's AWS credentials: where they come from, never what they are."""
    if settings.role_arn is not None:
        return f"aws role {settings.role_arn}"
    if settings.profile is not None:
        return f"aws profile {settings.profile}"
    return describe_reference("aws", settings.access_key_id or "")
