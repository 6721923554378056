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
from rules.providers import providers

log = logging.getLogger("sluice")


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
            self.request_policy = {
                p.name: build_policy(p, "request", rules.request_headers) for p in providers()
            }
            self.response_policy = {
                p.name: build_policy(p, "response", rules.response_headers) for p in providers()
            }
        except ValueError as e:
            raise exceptions.OptionsError(f"sluice_config {ctx.options.sluice_config}: rules: {e}") from None

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or not flow.live:
            return
        self._filter(flow, flow.request, "request", self.request_policy)
        if flow.request.trailers and self._provider(flow) is not None:
            # No provider API takes request trailers, and mitmproxy forwards them after this hook as they
            # came: a way around the allow-list (cookies as trailers). RFC 9110 §6.5.1: a recipient may
            # discard them.
            flow.request.trailers = None
            self._note(flow, "request_trailers_dropped")

    def response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None or not response.trailers or not flow.live:
            return
        provider = self._provider(flow)
        if provider is None:
            return
        kept, dropped = filter_headers(response.trailers.fields, self.response_policy[provider])
        if dropped:
            response.trailers.fields = tuple(kept)
            self._note(flow, f"response_trailers_dropped:{','.join(sorted(dropped, key=str.lower))}")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        # Response headers leave right after this hook, so the filter must run here, not in `response`.
        if flow.response is not None:
            self._filter(flow, flow.response, "response", self.response_policy)

    def _filter(
        self, flow: http.HTTPFlow, message: http.Message, direction: str, policies: dict[str, HeaderAllowList]
    ) -> None:
        if not flow.live:
            return
        if isinstance(message, http.Response) and self.core.answered_by_sluice(message):
            return  # sluice's own answer: every header in it is sluice's choice
        provider = self._provider(flow)
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
        self._note(flow, f"{direction}_headers_dropped:{','.join(sorted(dropped, key=str.lower))}")

    def _provider(self, flow: http.HTTPFlow) -> str | None:
        """Whose policy applies: the destination's provider (where the request really goes), else the
        metered call's (an LLM path on a host sluice does not know)."""
        provider = self.core.speaks(destination(flow).host) or self.core.envelope(flow)
        return provider.name if provider is not None else None

    def _note(self, flow: http.HTTPFlow, applied: str) -> None:
        call = self.core.calls.get(flow.id)
        if call is not None:
            call.rules_applied.append(applied)
