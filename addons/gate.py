"""Who is calling: matches the client key a request presents against `[[clients]]`.

On a host sluice swaps credentials for, a request without a known client key is answered by sluice itself —
401 in the provider's own envelope — and the upstream is never contacted. Elsewhere a known key still
attributes the call to its client. Keys are held only as SHA-256 digests (rules/clients.py).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from datetime import UTC, datetime

from mitmproxy import ctx, exceptions, http

from addons import sigv4
from addons.core import SluiceCore, destination, query_key
from addons.sigv4 import Refusal
from rules.clients import KnownClient, digest, match_client, presented_key
from rules.config import ConfigError, resolve_secret
from rules.providers import find_provider, host_region, served_path

log = logging.getLogger("sluice")

TRADED_TOKEN_S = 3599  # what the client is told of the access token it traded its key for (Google's own)
REFUSAL = (
    "sluice: this proxy needs a client key issued by its operator, sent as x-api-key or "
    "Authorization: Bearer; the key in this request is missing or unknown."
)


class Gate:
    security = True  # addons/chain.py: a failure here fails closed (who may call)

    def __init__(self, core: SluiceCore) -> None:
        self.core = core
        self.clients: list[KnownClient] = []
        # A placeholder AWS access key id -> its client, and the placeholder secret it signs with.
        self.aws_clients: dict[str, tuple[KnownClient, str]] = {}

    def configure(self, updated: set[str]) -> None:
        if "sluice_config" not in updated:
            return
        clients = []
        for index, client in enumerate(self.core.config.clients):
            field = f"clients[{index}].key"
            try:
                secret, inline = resolve_secret(client.key, field=field, base_dir=self.core.config_dir)
            except ConfigError as e:
                raise exceptions.OptionsError(f"sluice_config {ctx.options.sluice_config}: {e}") from None
            if inline:
                log.warning(
                    "sluice: %s (client %s) is written inline in the config; prefer env:NAME or file:PATH",
                    field,
                    client.name,
                )
            clients.append(KnownClient(client.name, digest(secret.get_secret_value()), client.user_id))
        self.clients = clients
        self.aws_clients = self._aws_clients()
        swapping = [u.host for u in self.core.config.upstreams if u.swaps]
        if swapping and not clients:
            log.warning(
                "sluice: credentials are swapped for %s but no [[clients]] are configured: every request "
                "to those hosts will be refused with 401",
                ", ".join(swapping),
            )

    def running(self) -> None:
        swapping = any(u.swaps for u in self.core.config.upstreams)
        host = ctx.options.listen_host
        if swapping and not _is_loopback(host):
            log.warning(
                "sluice: WARNING: listening on %s with credential swap enabled: anyone who can reach this "
                "port and holds a client key spends your provider credentials. Use --listen-host 127.0.0.1 "
                "unless every network on that address is yours.",
                host or "every interface",
            )

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live:
            return
        if self._trade_client_key(flow):
            return
        call = self.core.calls.get(flow.id)
        headers = call.request_headers if call is not None else flow.request.headers
        signed = self._signed_by(flow)
        if isinstance(signed, Refusal):
            self.core.answer(
                flow, 403, signed.message, {"x-should-retry": "false"}, f"refused: {signed.message}",
                code=signed.exception,
            )  # fmt: skip
            log.info("sluice: flow %s: refused a SigV4 request: %s", flow.id, signed.message)
            return
        key = presented_key(headers, query_key(flow, self.core.envelope(flow)))
        client = signed if signed is not None else (match_client(key, self.clients) if self.clients else None)
        if call is not None and client is not None:
            call.client = client.name
            call.user_id = client.user_id
        # Keyed on where the request goes (addons/confine.py has made sure its Host agrees).
        upstream = self.core.swapping_upstream(destination(flow).host)
        if upstream is None or client is not None:
            return
        self.core.answer(flow, 401, REFUSAL, {"x-should-retry": "false"}, "refused: no known client key")
        log.info(
            "sluice: flow %s: refused %s %s: no known client key",
            flow.id,
            flow.request.method,
            # Without the query: a key sent as `?key=` (Gemini) must not reach the log.
            flow.request.pretty_url.split("?", 1)[0],
        )

    def _signed_by(self, flow: http.HTTPFlow) -> KnownClient | Refusal | None:
        """The client whose placeholder AWS key pair signed this request (SigV4), verified by botocore over
        the request as received; a Refusal when it is signed but not acceptably (unknown key id, wrong
        signature, stale, another service or region...). None when the request is not SigV4-signed or goes
        to no provider that takes such signatures: the client key rules apply then."""
        provider = self.core.speaks(destination(flow).host)
        service = provider.sigv4_service if provider is not None else None
        authorization = flow.request.headers.get("authorization", "")
        if service is None or not authorization.startswith("AWS4-"):
            return None
        request = flow.request
        checked = sigv4.verify(
            method=request.method,
            url=f"https://{request.host}{request.path}",
            headers={name.lower(): value for name, value in request.headers.items()},
            body=request.raw_content or b"",
            secrets={key_id: secret for key_id, (_, secret) in self.aws_clients.items()},
            service=service,
            region=host_region(destination(flow).host),
            now=datetime.now(UTC),
        )
        if isinstance(checked, sigv4.Refusal):
            return checked
        return self.aws_clients[checked.access_key_id][0]

    def _aws_clients(self) -> dict[str, tuple[KnownClient, str]]:
        found = {}
        for index, client in enumerate(self.core.config.clients):
            if client.aws is None:
                continue
            field = f"clients[{index}].aws.secret_access_key"
            try:
                secret, _ = resolve_secret(
                    client.aws.secret_access_key, field=field, base_dir=self.core.config_dir
                )
            except ConfigError as e:
                raise exceptions.OptionsError(f"sluice_config {ctx.options.sluice_config}: {e}") from None
            known = next(c for c in self.clients if c.name == client.name)
            found[client.aws.access_key_id] = (known, secret.get_secret_value())
        return found

    def _trade_client_key(self, flow: http.HTTPFlow) -> bool:
        """A client's credential library trading a refresh token for an access token at a token endpoint of
        a configured upstream's provider (`Provider.client_token_endpoints`), the refresh token being the
        client's key: answered here, the access token being that same key, so the client presents it on
        its calls and holds nothing real. Any other trade (another refresh token, another grant, another
        host) goes on untouched; only a TLS request is answered (a key never travels in cleartext)."""
        request = flow.request
        if request.method != "POST" or request.scheme != "https" or not self.clients:
            return False
        endpoint = f"{destination(flow).host}{served_path(request.path)}"
        if endpoint not in self._token_endpoints():
            return False
        form = request.urlencoded_form  # mitmproxy's parser; empty unless the body is a form
        key = form.get("refresh_token") if form.get("grant_type") == "refresh_token" else None
        client = match_client(key, self.clients) if key else None
        if client is None or key is None:
            return False
        answer = {"access_token": key, "expires_in": TRADED_TOKEN_S, "token_type": "Bearer"}
        flow.response = http.Response.make(
            200,
            json.dumps(answer).encode(),
            {
                "content-type": "application/json; charset=utf-8",
                "cache-control": "no-store",
                "pragma": "no-cache",
            },
        )
        log.info("sluice: flow %s: answered %s's token refresh at %s itself", flow.id, client.name, endpoint)
        return True

    def _token_endpoints(self) -> set[str]:
        named = {u.provider for u in self.core.config.upstreams if u.swaps}
        return {e for name in named if (p := find_provider(name)) for e in p.client_token_endpoints}


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
