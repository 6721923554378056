"""What sluice knows of each provider, in one place per provider and wire format.

A `Provider` is who serves (and bills) a call: its own hosts, how a client presents a key and how the real
one is written, its header families, its error envelope. A `WireFormat` is one API a provider speaks: which
requests are it, how its answers are read (whole and streamed), which request rules apply to its body and
how, its transcript for the mitmweb view, its prompt-cache shape, its cost estimate.

The registry maps a request to its wire format (`classify`) and a name to its provider or wire format; the
addons and the rest of rules/ ask it and hold no provider names of their own. A provider module builds its
`Provider` and `WireFormat`s and `register`s them when it is imported; this package imports the built-in
ones at the end. Adding a provider is one such module (README: "Adding a provider").

Pure: this package and its modules import the standard library, pydantic and rules/ only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

if TYPE_CHECKING:
    from rules.cache_health import PromptShape
    from rules.config import SystemBlock
    from rules.transcript import Part, RequestOutline
    from rules.usage import Reading

JSONObject = dict[str, Any]


class StreamEvents(Protocol):
    """A wire format's reader of one streamed answer's events (rules/usage.py's StreamReader drives it)."""

    def on_event(self, name: str | None, data: str, reading: Reading) -> bool:
        """Read one SSE event (its `event:` name, None when unnamed, and its data) into `reading`; True iff
        it bears output (StreamReader keeps which was the first). The terminal event sets
        `reading.complete`. Called for every event of the stream: keep the common ones cheap."""
        ...


class PartsBuilder(Protocol):
    """A wire format's builder of the assistant's output from a stream's events (the transcript)."""

    def take(self, event: str | None, payload: JSONObject) -> None: ...

    def parts(self) -> list[Part]: ...


@dataclass(frozen=True, slots=True)
class Provider:
    """Who serves and bills: what every wire format of one provider shares."""

    name: str  # the `provider` column, and `[[upstreams]] provider = ...`
    hosts: tuple[str, ...]  # the provider's own API hosts (a request there is this provider's)
    # Extra header names (or `*` families) allowed through by default, each way, on top of the common ones.
    request_headers: tuple[str, ...]
    response_headers: tuple[str, ...]
    # The provider's error envelope, for answers sluice gives in its name: (status, message, code) -> body.
    error_body: Callable[[int, str, str | None], bytes]
    # An in-stream error record, for a stream sluice must end early.
    sse_error_event: Callable[[int, str], bytes]
    # How the real credential is written: (request headers, secret, "key" | "oauth") -> header changes
    # (name -> value, None to remove). Every header a client may carry a key in is removed or replaced.
    write_credential: Callable[[Mapping[str, str], str, str], dict[bytes, bytes | None]]
    key_headers: tuple[str, ...]  # every header a key may travel in (never logged, never recorded)
    key_query: str | None = None  # a query parameter a client may put its key in (taken out upstream)
    # The environment variables this provider's SDKs and CLIs read their key from (`sluice sandbox` sets
    # them to the client key, and never passes the real ones on).
    key_variables: tuple[str, ...] = ()
    overloaded_status: int = 503  # what sluice answers while the provider says it is overloaded
    # The AWS service name its requests are signed for with SigV4 (`bedrock`): a client may sign with its
    # placeholder key pair, which sluice verifies, and sluice re-signs with the real credentials.
    sigv4_service: str | None = None
    pricing_id: str | None = None  # genai-prices' provider id, when not `name`
    # A cloud's regional hosts (`bedrock-runtime.us-east-1.amazonaws.com`): host -> its region, None for a
    # host that is not one of them. A regional host is the provider's own like those in `hosts`.
    regional_host: Callable[[str], str | None] | None = None
    # The response header naming an error's type when its body does not (AWS: `x-amzn-errortype`,
    # `ThrottlingException:http://...`; rules/provider_answers.py reads it).
    error_type_header: str | None = None
    # -- what its answers say of the credential (rules/provider_answers.py `judge_answer`) -------------
    # The header family of its subscription windows: `<prefix>status` is `rejected` when one is spent,
    # `<prefix>reset` (epoch seconds), `<prefix><window>-status` / `-reset`, `<prefix>representative-claim`.
    window_prefix: str = ""
    # Its counted rate limits' headers (`x-ratelimit-remaining-tokens`): a full match of a lower-case name
    # gives the limit (group `name`) and which of its `limit`, `remaining` or `reset` the header is (group
    # `field`); a reset is a time or a duration (rules/times.py `parse_reset`). Matched after the windows.
    counted_limits: re.Pattern[str] | None = None
    # The same family written by sluice, for its own 429s (a client's or team's rate limit): (sluice's limit:
    # `rpm`, `input_tpm` or `output_tpm`; its value; what remains; seconds until it has room) -> headers.
    limit_headers: Callable[[str, int, int, float], dict[str, str]] | None = None
    window_words: tuple[str, ...] = ()  # lower-case words of its messages that mark a spent window
    terminal_words: tuple[str, ...] = ()  # ... that mark a credential disabled for good
    terminal_codes: tuple[str, ...] = ()  # error codes (or ErrorInfo reasons) that do
    # (status, error type) of its "overloaded" answers; None matches any.
    overloaded_answers: tuple[tuple[int | None, str | None], ...] = ()
    # The headers that list its models with an API key (`sluice doctor --online`); None: a bearer token.
    models_headers: Callable[[str], dict[str, str]] | None = None
    example_model: str = ""  # a model it serves, for examples in messages (`sluice doctor`, pricing)
    # Token endpoints (`host/path`) where its clients' credential libraries trade a refresh token for an
    # access token: a client whose refresh token is its client key is answered by sluice with that key as
    # the access token (addons/gate.py), so only placeholders live on the client.
    client_token_endpoints: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WireFormat:
    """One API a provider speaks, with everything sluice does to and reads from it.

    A hook left None means the wire format has no such thing (no cache markers, no transcript): the part
    that would use it passes the call by, and says so where a person looks."""

    name: str  # the `api` column: "messages", "chat", ...
    provider: Provider
    path_suffixes: tuple[str, ...]  # a POST whose path ends so is this wire format (gateways mount prefixes)
    path_contains: str = ""  # ... and holds this too (a suffix as short as Bedrock's `/invoke` needs it)
    billed: bool = True  # False: the call costs nothing (a token count)
    path_model: Callable[[str], str | None] | None = None  # the model, where the path names it (Gemini)
    # -- answers (rules/usage.py drives these) ---------------------------------------------------------
    # A whole 2xx answer's JSON object -> what it says (statuses, JSON, error envelopes are read generically)
    read_body: Callable[[Mapping[str, object]], Reading] | None = None
    stream_events: Callable[[], StreamEvents] | None = None  # a fresh reader of one stream's events
    # How its streams are framed: "sse" (text/event-stream) or "eventstream" (AWS event-stream frames,
    # application/vnd.amazon.eventstream); rules/usage.py `framing` names each one's parser.
    stream_framing: str = "sse"
    terminal_event: str = ""  # the event that ends a complete stream (named in "stream ended before ...")
    # (event name, data) -> the characters of output the event carries (text, thinking, tool arguments), for a
    # stream metered as it flows (a budget enforced mid-stream); None: such a stream cannot be.
    output_chars: Callable[[str | None, str], int] | None = None
    # -- the request body (rules/rewrite.py applies the rules in its fixed order) ----------------------
    # Which of "billing", "alias", "system", "user_id", "max_tokens", "cache", "stream_usage" apply; each
    # but "alias" (the body's `model`, the same everywhere) through its hook below. Each hook returns the
    # very same body when it has nothing to do, and never mutates its input.
    rule_set: frozenset[str] = frozenset()
    strip_billing: Callable[[JSONObject], JSONObject] | None = None  # a client's attribution block
    # (body, blocks) -> (body, names added, where the added blocks lie, for `mark_cache`)
    inject_system: (
        Callable[[JSONObject, Sequence[SystemBlock]], tuple[JSONObject, list[str], list[Any]]] | None
    ) = None
    stamp_user: Callable[[JSONObject, str], JSONObject] | None = None  # (body, user id): never overwrites
    backfill_max_tokens: Callable[[JSONObject, int | None], JSONObject] | None = None  # (body, default)
    # (body, most markers allowed, where sluice's blocks lie) -> (body, what was done, for `applied`)
    mark_cache: Callable[[JSONObject, int, Sequence[Any]], tuple[JSONObject, list[str]]] | None = None
    count_cache_marks: Callable[[JSONObject], int] | None = None  # the body's cache markers (sluice replay)
    # body -> (body asking its stream for usage, whether the client had asked itself)
    request_stream_usage: Callable[[JSONObject], tuple[JSONObject, bool]] | None = None
    usage_only_chunk: Callable[[str], bool] | None = None  # an SSE `data:` only there because sluice asked
    # -- estimate (budgets: rules/estimate.py) ---------------------------------------------------------
    # The request's output ceiling, any of these (the largest counts); a dotted path where it is nested.
    output_fields: tuple[str, ...] = ()
    unbounded_without_ceiling: bool = True  # no ceiling: the model may write up to its own maximum
    choices_fields: tuple[str, ...] = ()  # each of `n` choices may use the whole ceiling (the largest `n`)
    # -- the mitmweb view (rules/transcript.py) --------------------------------------------------------
    body_parts: Callable[[Mapping[str, Any]], list[Part]] | None = None  # a whole answer's JSON -> output
    stream_parts: Callable[[], PartsBuilder] | None = None  # a fresh builder, fed each JSON event in order
    outline: Callable[[Mapping[str, Any]], RequestOutline] | None = None  # a request body; never raises
    # -- prompt cache (rules/cache_health.py) ----------------------------------------------------------
    prompt_shape: Callable[[JSONObject], PromptShape] | None = None  # None: the cache is not judged
    first_user_message: Callable[[JSONObject], object | None] | None = None
    # -- content export (opted-in OpenTelemetry content) -----------------------------------------------
    messages_field: str | None = None
    system_field: str | None = None
    # The GenAI semantic conventions' `gen_ai.operation.name` (ops/tracing.py).
    operation: str = "chat"

    def __post_init__(self) -> None:
        hooks = {
            "billing": (self.strip_billing,),
            "alias": (),
            "system": (self.inject_system,),
            "user_id": (self.stamp_user,),
            "max_tokens": (self.backfill_max_tokens,),
            "cache": (self.mark_cache,),
            "stream_usage": (self.request_stream_usage, self.usage_only_chunk),
        }
        for rule in sorted(self.rule_set):
            if rule not in hooks:
                raise ValueError(f"wire format {self.name!r}: unknown request rule {rule!r}")
            if any(hook is None for hook in hooks[rule]):
                raise ValueError(f"wire format {self.name!r}: request rule {rule!r} has no hook")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a request is: its provider and wire format (names kept for the row)."""

    wire: WireFormat

    @property
    def provider(self) -> str:
        return self.wire.provider.name

    @property
    def api(self) -> str:
        return self.wire.name


_PROVIDERS: dict[str, Provider] = {}
_WIRES: dict[str, WireFormat] = {}
_BY_SUFFIX: list[tuple[str, WireFormat]] = []  # longest suffix first
_KEY_HEADERS: list[frozenset[str]] = []  # every provider's key headers, once asked for; reset by register


def register(*wires: WireFormat) -> None:
    """Make wire formats (and their providers) known. A name registered twice must be the same object."""
    for wire in wires:
        for table, key, value in ((_PROVIDERS, wire.provider.name, wire.provider), (_WIRES, wire.name, wire)):
            existing = table.get(key)
            if existing is not None and existing is not value:
                raise ValueError(f"a second {type(value).__name__} named {key!r}")
            table[key] = value  # type: ignore[assignment]
        for suffix in wire.path_suffixes:
            _BY_SUFFIX.append((suffix, wire))
    _BY_SUFFIX.sort(key=lambda pair: len(pair[0]), reverse=True)
    _KEY_HEADERS.clear()
    _WINDOW_HEADERS.clear()
    _COUNTED_HEADERS.clear()


def key_header_names() -> frozenset[str]:
    """Every header (lower-case name) a key of some known provider may travel in."""
    if not _KEY_HEADERS:
        names = (name.lower() for known in _PROVIDERS.values() for name in known.key_headers)
        _KEY_HEADERS.append(frozenset(names))
    return _KEY_HEADERS[0]


def classify(method: str, path: str) -> Endpoint | None:
    """The wire format a request speaks, or None when it is not a metered LLM call.

    Matched by path suffix so that gateways and reverse proxies that mount an API under a prefix
    (`/anthropic/v1/messages`, `/openai/v1/chat/completions`) are recognised too."""
    if method.upper() != "POST":
        return None
    bare = served_path(path)
    for suffix, wire in _BY_SUFFIX:
        if bare.endswith(suffix) and wire.path_contains in bare:
            return Endpoint(wire)
    return None


def find_wire_format(api: str) -> WireFormat | None:
    return _WIRES.get(api)


def served_path(path: str) -> str:
    """The path a server serves for `path`: without the query, percent-escapes decoded, dot segments
    resolved (RFC 3986 §5.2.4), no trailing slash. Endpoints are matched on it, not on the raw path: a
    billed call spelt `/v1/x/../messages` or `...%3AgenerateContent` reaches the provider's endpoint all
    the same, and must not pass unrecognised (unbudgeted, unrecorded)."""
    segments: list[str] = []
    for segment in unquote(path.split("?", 1)[0]).split("/"):
        if segment == "..":
            if len(segments) > 1:
                segments.pop()
        elif segment != ".":
            segments.append(segment)
    return "/".join(segments).rstrip("/")


def wire_format(api: str) -> WireFormat:
    """A wire format by its `api` name; KeyError names the known ones."""
    try:
        return _WIRES[api]
    except KeyError:
        raise KeyError(f"unknown API {api!r}; known: {', '.join(sorted(_WIRES))}") from None


def provider(name: str) -> Provider:
    try:
        return _PROVIDERS[name]
    except KeyError:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(sorted(_PROVIDERS))}") from None


def find_provider(name: str) -> Provider | None:
    """A provider sluice has a module for, by name; None for any other (a gateway genai-prices prices)."""
    return _PROVIDERS.get(name)


# The format a gateway speaks when sluice has no module for its provider (OpenRouter, Groq, DeepSeek, ...).
GATEWAY_FORMAT = "openai"


def format_of(name: str) -> Provider:
    """The provider whose format an upstream named `name` speaks: its own, or a gateway's (OpenAI's)."""
    return _PROVIDERS.get(name) or _PROVIDERS[GATEWAY_FORMAT]


def providers() -> Iterator[Provider]:
    return iter(list(_PROVIDERS.values()))


def provider_for_host(host: str) -> Provider | None:
    """The provider whose own API host this is (any case, trailing dot or not)."""
    wanted = host.lower().rstrip(".")
    for known in _PROVIDERS.values():
        if wanted in known.hosts or (known.regional_host is not None and known.regional_host(wanted)):
            return known
    return None


# What each rate-limit header name was read as: every answer carries the same two dozen, and each is read
# for the pool, the quota and the row. Bounded: an upstream's names are not ours to count.
_WINDOW_HEADERS: dict[str, tuple[Provider, str] | None] = {}
_COUNTED_HEADERS: dict[str, tuple[Provider, str, str] | None] = {}
_HEADER_MEMO_MAX = 4096


def window_header(name: str) -> tuple[Provider, str] | None:
    """The provider whose subscription-window family a rate-limit header (lower-case name) belongs to, and
    what follows the family's prefix (`status`, `5h-utilization`, ...); None for any other header."""
    try:
        return _WINDOW_HEADERS[name]
    except KeyError:
        pass
    found = None
    for known in _PROVIDERS.values():
        if known.window_prefix and name.startswith(known.window_prefix):
            found = known, name[len(known.window_prefix) :]
            break
    if len(_WINDOW_HEADERS) >= _HEADER_MEMO_MAX:
        _WINDOW_HEADERS.clear()
    _WINDOW_HEADERS[name] = found
    return found


def counted_limit_header(name: str) -> tuple[Provider, str, str] | None:
    """(provider, limit, field) of a counted rate limit's header (lower-case name), None for any other. A
    window's header is not one, though a family's pattern may match it."""
    try:
        return _COUNTED_HEADERS[name]
    except KeyError:
        pass
    found = None
    if window_header(name) is None:
        for known in _PROVIDERS.values():
            if known.counted_limits is not None and (match := known.counted_limits.fullmatch(name)):
                found = known, match["name"], match["field"]
                break
    if len(_COUNTED_HEADERS) >= _HEADER_MEMO_MAX:
        _COUNTED_HEADERS.clear()
    _COUNTED_HEADERS[name] = found
    return found


def window_prefixes() -> list[str]:
    """Every provider's subscription-window header prefix."""
    return [known.window_prefix for known in _PROVIDERS.values() if known.window_prefix]


def host_region(host: str) -> str | None:
    """The cloud region a provider's regional host names (the row's `region`); None for any other host."""
    wanted = host.lower().rstrip(".")
    for known in _PROVIDERS.values():
        if known.regional_host is not None and (region := known.regional_host(wanted)):
            return region
    return None


# The built-in providers register themselves on import.
from rules.providers import anthropic, bedrock, gemini, openai, vertex  # noqa: E402, F401
