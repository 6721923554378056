"""Options, configuration, the per-call records and the database writer that every other sluice part shares.

The core is the first part in the chain (addons/sluice.py, addons/order.py): its `request` hook creates the
call record of every metered request (addons/calls.py) before any other part looks at the flow, and every
other part only reads it (`core.calls.get(flow.id)`). No part acts on a call earlier: none has a
`requestheaders`, `http_connect` or `server_connect` hook that reads a record (confinement's and the
sandbox's `server_connect` judge the connection alone).
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Callable
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from addons import mitm_internals
from addons.annotate import MARK_SETS
from addons.calls import Call
from addons.decoding import DEFAULT_DECODE_MAX
from addons.fields import header_values
from addons.startup import check_mitmproxy, check_options, config_error
from rules.clients import presented_key
from rules.config import Config, ConfigError, Upstream, load_config
from rules.destination import Destination, normalize_host
from rules.providers import (
    GATEWAY_FORMAT,
    Provider,
    classify,
    find_provider,
    format_of,
    host_region,
    key_header_names,
    provider_for_host,
    providers,
    served_path,
    wire_format,
)
from rules.secrets import fingerprint
from state.pricing import billing_provider, price_providers
from state.store import AnyStore, Store, open_store, redact, redact_error
from state.writer import Record, RecordWriter

log = logging.getLogger("sluice")

DEFAULT_KEEP_BODY = 4 * 1024 * 1024

# The providers' own API hosts: their traffic gets the provider's header policy even when no
# `[[upstreams]]` entry names them.


def connect_lazily(options: mitm_internals.OptManager) -> None:
    """Make `connection_strategy=lazy` sluice's default, unless the operator chose a strategy.

    mitmproxy's own default, eager, connects upstream as soon as a client opens its tunnel: a provider that
    cannot be reached then fails the tunnel before any request exists, so the client sees a dropped
    connection instead of an answer and the call gets no row. Lazily, the failure belongs to the request,
    which sluice answers in the provider's envelope and records. `--set connection_strategy=eager` still
    wins: an explicit choice is a value set on the option, the default is not.
    """
    if mitm_internals.option_left_unset(options, "connection_strategy"):
        options.update(connection_strategy="lazy")


def destination(flow: http.HTTPFlow) -> Destination:
    """Where mitmproxy sends this request: the scheme, host and port it opens its upstream connection with.

    mitmproxy connects to `request.scheme/host/port` (`make_server_connection`), which it sets from the
    CONNECT target, an absolute-form URL or the reverse-mode spec, and only for a request that names no
    other from its Host header. `pretty_host` is the Host header: what the client wrote, not where it goes.
    """
    request = flow.request
    return Destination.of(request.scheme, request.host, request.port)


# The request headers a part reads from the call record besides the keys a client presents (every known
# provider's key headers): the body's framing and coding (rewrite), Claude Code's session (the row), trace
# context (ops). Only these are decoded and held: a record lives as long as its call, and a fleet of agents
# keeps a thousand calls streaming for minutes.
READ_REQUEST_HEADERS = frozenset(
    {
        "authorization",
        "content-encoding",
        "transfer-encoding",
        "x-claude-code-session-id",
        "traceparent",
        "tracestate",
    }
)
_read_headers: dict[frozenset[str], frozenset[bytes]] = {}


def read_request_headers() -> frozenset[bytes]:
    """The request headers a call record keeps (`READ_REQUEST_HEADERS` and every provider's key headers)."""
    keys = key_header_names()
    found = _read_headers.get(keys)
    if found is None:
        _read_headers.clear()
        found = _read_headers[keys] = frozenset(name.encode() for name in READ_REQUEST_HEADERS | keys)
    return found


def new_call(flow: http.HTTPFlow) -> Call | None:
    """The call record of a metered LLM request, as it arrived (before any part changed it); None for a
    request that is not one (sluice forwards it untouched and records nothing)."""
    endpoint = classify(flow.request.method, flow.request.path)
    if endpoint is None:
        return None
    headers = header_values(flow.request.headers.fields, read_request_headers())
    key = presented_key(headers, query_key(flow, endpoint.wire.provider))
    path_model = endpoint.wire.path_model
    return Call(
        flow_id=flow.id,
        host=destination(flow).authority,  # where it really goes, not its Host header
        method=flow.request.method,
        path=flow.request.path.split("?", 1)[0],
        provider=endpoint.provider,
        api=endpoint.api,
        started=flow.request.timestamp_start,
        session_id=headers.get("x-claude-code-session-id"),
        credential=fingerprint(key) if key else "none",
        request_headers=headers,
        request_model=path_model(served_path(flow.request.path)) if path_model is not None else None,
        # Another addon (mitmproxy's server replay, say) answered before sluice's parts ran.
        answered_locally=flow.response is not None,
    )


def check_providers(config: Config, source: str) -> None:
    """Every upstream's provider is one sluice speaks or one genai-prices prices (a gateway); ConfigError
    naming the entry otherwise."""
    for index, upstream in enumerate(config.upstreams):
        if find_provider(upstream.provider) is None and upstream.provider not in price_providers():
            speaks = ", ".join(sorted(known.name for known in providers()))
            field = f"upstreams[{index}].provider"
            reason = (
                f"unknown provider {upstream.provider!r}: sluice speaks {speaks}; a gateway is named by its "
                "genai-prices provider id (openrouter, groq, deepseek, together, ...)"
            )
            raise ConfigError(f"{source}: {field}: {reason}", source=source, problems=[(field, reason)])


def query_key(flow: http.HTTPFlow, provider: Provider | None) -> str | None:
    """A key the client put in the URL, for a provider that takes one there (Gemini's `key=`)."""
    if provider is None or provider.key_query is None:
        return None
    return flow.request.query.get(provider.key_query)


def speaks(upstream: Upstream) -> Provider:
    """The format a configured upstream speaks: its provider's, or OpenAI's for a gateway sluice has no
    module for (OpenRouter, Groq, DeepSeek, ...: `provider` then says who bills)."""
    return format_of(upstream.provider)


class SluiceCore:
    def __init__(self) -> None:
        self.config = Config()
        self.config_dir: Path | None = None
        # The database, opened from `sluice_db`: every part takes its connections from it. A part keeping a
        # connection reopens it when this is another object than the one it opened from.
        self.store: AnyStore | None = None
        self.writer: RecordWriter | None = None
        self.calls: dict[str, Call] = {}
        self._upstreams: dict[str, Upstream] = {}
        # The responses sluice made itself, for as long as their flows hold them.
        self._own_answers: weakref.WeakSet[http.Response] = weakref.WeakSet()
        # Run at shutdown before the writer drains, so calls still in flight get their rows.
        self.shutdown_hooks: list[Callable[[], None]] = []
        # Someone can see what sluice notes on a flow (comment, marks, metadata) while it is live: a UI
        # (mitmweb, the console), flows saved as they pass (`-w`), or mitmdump printing bodies
        # (`flow_detail` >= 3). A plain mitmdump shows none of it.
        self.flows_shown = True
        # A part reads each call's parsed request after it has left (ops exporting prompt content): the
        # rewrite then keeps it on the record until the call ends instead of letting it go at its answer.
        self.keeps_request_json = False
        # Set once mitmproxy runs: before it, an option error stops start-up (addons/startup.py).
        self.started = False

    def load(self, loader):  # type: ignore[no-untyped-def]
        loader.add_option(
            "sluice_config",
            str | None,
            None,
            "Path of sluice's TOML config (clients, upstreams, rules). Without one, sluice only records.",
        )
        loader.add_option(
            "sluice_db",
            str,
            "sluice.db",
            "Path of the SQLite database sluice records calls and rate limits into.",
        )
        loader.add_option(
            "sluice_keep_body",
            int,
            DEFAULT_KEEP_BODY,
            "Bytes of each streamed LLM response kept so mitmweb, saved flows and printed flows can show it "
            "(0: none). A plain mitmdump, which shows no body, keeps none.",
        )
        loader.add_option(
            "sluice_decode_max",
            int,
            DEFAULT_DECODE_MAX,
            "Bytes of a body sluice decodes or parses to read it; past them it passes on unread (0: none).",
        )
        loader.add_option(
            "sluice_marks",
            str,
            "emoji",
            "How flagged calls are marked in the flow list: emoji, symbols (characters text fonts have, "
            "for a machine without an emoji font) or off. The #tags in the comment are written either way.",
            choices=list(MARK_SETS),
        )
        connect_lazily(loader.master.options)

    def configure(self, updated: set[str]) -> None:
        options = ctx.options
        saving = "save_stream_file" in options and bool(options.save_stream_file)
        # From flow_detail 3, mitmdump prints bodies through the contentviews, sluice's LLM view included.
        printing = "flow_detail" in options and options.flow_detail >= 3
        self.flows_shown = saving or printing or not mitm_internals.is_mitmdump(ctx.master)
        if not self.started:
            check_mitmproxy()
        check_options()
        if "sluice_marks" in updated and options.sluice_marks not in MARK_SETS:
            choices = ", ".join(MARK_SETS)
            raise exceptions.OptionsError(f"sluice_marks: {options.sluice_marks!r} is not one of {choices}")
        if "sluice_config" in updated:
            path = ctx.options.sluice_config
            try:
                self.config = load_config(path) if path else Config()
                check_providers(self.config, path)
            except ConfigError as e:
                raise config_error("sluice_config", e) from None
            self.config_dir = Path(path).expanduser().resolve().parent if path else None
            self._upstreams = {upstream.host: upstream for upstream in self.config.upstreams}
        if "sluice_db" in updated and (
            self.store is None or self.writer is None or ctx.options.sluice_db != self.store.location
        ):
            self._open_store(ctx.options.sluice_db)

    def _open_store(self, location: str) -> None:
        try:
            store = open_store(location)  # created and migrated now, so a bad location stops start-up
        except Exception as e:
            raise exceptions.OptionsError(
                f"sluice_db: cannot open {redact(location)}: {redact_error(location, e)}"
            ) from None
        if self.writer is not None:
            self.writer.close()
        if self.store is not None:
            self.store.close()
        self.store = store
        # Calls still in flight, read from the writer's thread (a dict's length: one atomic read), let it
        # wait a few ms for their rows and write them in one transaction. A file's writer watches the path
        # (a database deleted or replaced while open is created again).
        path = store.file if isinstance(store, Store) else None
        self.writer = RecordWriter(store.connect, path=path, in_flight=lambda: len(self.calls))
        self.writer.start()

    def request(self, flow: http.HTTPFlow) -> None:
        """Create the flow's call record: the one place a record is made, before any other part runs."""
        if flow.live and flow.id not in self.calls:
            call = new_call(flow)
            if call is not None:
                self.bill(call, destination(flow).host)
                self.calls[flow.id] = call

    def repoint(self, flow: http.HTTPFlow, host: str) -> None:
        """Send the request to `host` (by name, on the connection's scheme and port) instead of where the
        client's connection was headed, and keep the call's row saying where it really went."""
        flow.request.data.host = host
        call = self.calls.get(flow.id)
        if call is not None:
            call.host = destination(flow).authority
            self.bill(call, host)

    def bill(self, call: Call, host: str) -> None:
        """Who bills the call, from where it goes: its `[[upstreams]]` entry's provider, else the provider
        whose own host it is (sluice's, then genai-prices' host map); else the row names the wire format's
        provider and the model's name decides its price."""
        call.billed_by = self.billed_by(host)
        call.provider = call.billed_by or wire_format(call.api).provider.name
        call.region = host_region(normalize_host(host))

    def billed_by(self, host: str) -> str | None:
        upstream = self.upstream_for(host)
        return upstream.provider if upstream is not None else billing_provider(normalize_host(host))

    def upstream_for(self, host: str) -> Upstream | None:
        """The `[[upstreams]]` entry for a host name (any case, trailing dot or not), if configured.

        Pass a destination's host (`destination(flow).host`), never what the request's Host header says.
        """
        return self._upstreams.get(normalize_host(host))

    def swapping_upstream(self, host: str) -> Upstream | None:
        """The `[[upstreams]]` entry for a host name, if sluice swaps credentials for it."""
        upstream = self.upstream_for(host)
        return upstream if upstream is not None and upstream.swaps else None

    def speaks(self, host: str) -> Provider | None:
        """The provider whose format a host speaks (header families, how a key is written, its envelope): a
        configured upstream's, when sluice has a module for its provider, else OpenAI's (the format the
        gateways genai-prices prices speak); else the provider whose own host it is."""
        upstream = self.upstream_for(host)
        if upstream is not None:
            return speaks(upstream)
        return provider_for_host(normalize_host(host))

    def envelope(self, flow: http.HTTPFlow) -> Provider | None:
        """The provider in whose format sluice answers a flow: its call's wire format's (a chat call on
        Anthropic's host is answered as OpenAI's API would), else its destination's; None for a flow that
        is neither a call nor to a provider host."""
        call = self.calls.get(flow.id)
        if call is not None:
            return wire_format(call.api).provider
        return self.speaks(destination(flow).host)

    def answer(
        self,
        flow: http.HTTPFlow,
        status: int,
        message: str,
        headers: dict[str, str],
        note: str,
        provider: Provider | None = None,
        code: str | None = None,
    ) -> None:
        """Answer the request in sluice's name, in the provider's own error envelope (`provider`, else the
        flow's: `envelope`; OpenAI's for a host that speaks none sluice knows), with the provider's error
        `code` when it has one for the case; the upstream is never contacted. The call's row says why
        (`note`)."""
        provider = provider or self.envelope(flow) or format_of(GATEWAY_FORMAT)
        flow.response = http.Response.make(
            status,
            provider.error_body(status, message, code),
            {"content-type": "application/json", **headers},
        )
        self._own_answers.add(flow.response)
        self.answered(flow, note)

    def answered_by_sluice(self, response: http.Response) -> bool:
        """Whether sluice made this response itself (`answer`): its headers are sluice's own choice, which
        the header filter lets through (`x-sluice-*` from anywhere else never is)."""
        return response in self._own_answers

    def answered(self, flow: http.HTTPFlow, note: str) -> None:
        """A part has answered the request itself (`flow.response`): the call's row says so, and why."""
        call = self.calls.get(flow.id)
        if call is not None:
            call.answered_locally = True
            call.notes.append(note)

    @property
    def marks(self) -> dict[str, str]:
        """Flag -> mitmproxy mark for flagged calls (addons/annotate.py), as `sluice_marks` chooses."""
        options = ctx.options
        return MARK_SETS["emoji" if "sluice_marks" not in options else options.sluice_marks]

    @property
    def keep_body(self) -> int:
        return max(0, int(ctx.options.sluice_keep_body))

    def record(self, record: Record) -> None:
        if self.writer is not None:
            self.writer.put(record)

    def running(self) -> None:
        self.started = True
        # What is loaded by now (mitmproxy, sluice, and the price table, loaded here rather than by the
        # first call) lives as long as the process. Frozen, it is left out of every later collection: a full
        # collection of it (~115k objects) costs ~40 ms, which would land on the event loop at random, in
        # the middle of other flows' streams.
        price_providers()
        gc.collect()
        gc.freeze()

    def done(self) -> None:
        for hook in self.shutdown_hooks:
            hook()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.store is not None:
            self.store.close()
