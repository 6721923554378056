"""Allow-lists for the headers that cross the proxy, both ways, on provider traffic.

Applies to flows for a provider host (the providers' own API hosts and every `[[upstreams]]` host) and to
metered calls on any host. Everything else — a CI job's package downloads through the same proxy — passes
untouched. The policies are built once per configuration (rules/headers.py); a bad pattern stops start-up.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions, http

from addons.core import SluiceCore, destination
from rules.headers import HeaderAllowList, build_policy, filter_headers, is_upgrade_request

log = logging.getLogger("sluice")

PROVIDERS = ("anthropic", "openai")


class Headers:
    security = True  # addons/chain.py: a failure here fails closed (which headers cross)

    def __init__(self, core: SluiceCore) -> None:
        self.core = core
        self.request_policy: dict[str, HeaderAllowList] = {}
        self.response_policy: dict[str, HeaderAllowList] = {}

    def configure(self, updated: set[str]) -> None:
        if "sluice_config" not in updated:
            return
        rules = self.core.config.rules
        try:
            self.request_policy = {p: build_policy(p, "request", rules.request_headers) for p in PROVIDERS}
            self.response_policy = {p: build_policy(p, "response", rules.response_headers) for p in PROVIDERS}
        except ValueError as e:
            raise exceptions.OptionsError(f"sluice_config {ctx.options.sluice_config}: rules: {e}") from None

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is None:
            self._filter(flow, flow.request, "request", self.request_policy)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Response headers leave right after this hook, so the filter must run here, not in `response`.
        if flow.response is not None:
            self._filter(flow, flow.response, "response", self.response_policy)

    def _filter(
        self, flow: http.HTTPFlow, message: http.Message, direction: str, policies: dict[str, HeaderAllowList]
    ) -> None:
        if not flow.live:
            return
        call = self.core.calls.get(flow.id)
        provider = call.provider if call is not None else self.core.provider_for(destination(flow).host)
        if provider is None:
            return
        # Provider traffic is filtered whatever it claims to be. A genuine upgrade (an upgrade request, and
        # then only the 101 answering it) keeps what the protocol switch needs: a client that writes
        # `Connection: upgrade` cannot turn the allow-lists off (cookies up, set-cookie back).
        if isinstance(message, http.Response):
            upgrade = message.status_code == 101 and is_upgrade_request(flow.request.headers.fields)
        else:
            upgrade = is_upgrade_request(message.headers.fields)
        kept, dropped = filter_headers(message.headers.fields, policies[provider], upgrade=upgrade)
        if not dropped:
            return
        message.headers.fields = tuple(kept)
        if call is not None:
            names = ",".join(sorted(dropped, key=str.lower))
            call.rules_applied.append(f"{direction}_headers_dropped:{names}")
