"""Request-body rules: what sluice changes in a provider call before it leaves, and nothing else.

Each rule takes a parsed body (a dict) and returns a new one, or the very same object when it has nothing
to do; none mutates its input. `apply_request_rules` is the one entry point the addon calls: raw bytes in,
`RuleResult` out. It fails open throughout: whenever it cannot read the body or a rule cannot apply, the
original bytes are forwarded untouched and `note` says why. It never raises.

Fidelity: a body no rule changes is forwarded byte for byte (`RuleResult.body is None`). In a changed body
the top-level members no rule touched are copied from the client's bytes as they were (on an agent's request
that is nearly all of it: messages, tools), and the members a rule changed are written as compact JSON; key
order is kept and every number stays exactly as the client wrote it (`1e400`, `0.10`, a 5000-digit
integer), so a rewrite can never alter a value sluice did not mean to touch.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from rules.config import Rules, SystemBlock

if TYPE_CHECKING:
    from rules.providers import WireFormat

JSONObject = dict[str, Any]


# --- JSON that round-trips ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawNumber:
    """A JSON number kept as the exact text the client sent (floats overflow, ints hit digit limits)."""

    text: str


class ParsedObject(dict[str, Any]):
    """A JSON object as the parser builds it: a dict, plus `digest`, a slot for what a reader derived from
    it (the prompt-cache digest of a block, rules/cache_health.py). Nothing mutates a parsed body (rules
    return new objects), so whatever is kept there stays true for as long as the object lives; a MemberMemo
    shares it, and so what was derived, between the calls that repeat it."""

    __slots__ = ("digest",)
    digest: tuple[str, bool, bytes]  # (role, markers left out, digest); unset until a reader sets it


class _DuplicateKeyError(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> JSONObject:
    result = ParsedObject(pairs)
    if len(result) != len(pairs):
        # Re-serializing would silently keep only the last value; forwarding untouched keeps them all.
        raise _DuplicateKeyError("duplicate keys")
    return result


def parse_json(text: str) -> Any:
    """Parse JSON keeping key order and numbers' exact text; raises ValueError (or RecursionError)."""
    return json.loads(
        text,
        object_pairs_hook=_object_without_duplicates,
        parse_float=RawNumber,
        parse_int=RawNumber,
        parse_constant=RawNumber,  # NaN / Infinity: not JSON, but passed on as the client wrote them
    )


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_float=RawNumber,
    parse_int=RawNumber,
    parse_constant=RawNumber,
)
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # RFC 8259 §2: insignificant whitespace
MARKER = '"cache_control"'
Spans = dict[str, tuple[int, int]]


class MemberMemo:
    """The parsed values of what an agent sends again, verbatim, call after call: its `tools` and `system`
    (the same tens of kilobytes on every turn) and every message of the conversation so far (a turn re-sends
    them all and adds one or two).

    A value's extent is only known once it is parsed, so the memo keeps the exact text of recent values and
    checks whether the request repeats one at the same place (a prefix compare in C): a JSON array or object
    ends at its own closing bracket, so the same text there is the same value. Members are remembered per
    name; the elements of `messages` and `input` by the first ELEMENT_KEY_CHARS of their text (which holds
    a tool call's id or the start of a message's text), the most recent ELEMENT_CHARS_MAX characters of
    them. A message carrying a cache breakpoint is not remembered: the client moves that marker on at its
    next turn, so the same text never comes back (and keeping what never returns only churns memory and
    the garbage collector). Values are shared between calls: the rules never mutate what they are given.
    Bounded; thread-safe (large bodies are rewritten on worker threads).
    """

    MEMBERS = frozenset({"tools", "system", "instructions"})
    MIN_CHARS = 128  # smaller ones cost less to parse than to look up
    PER_MEMBER = 8
    ELEMENTS = frozenset({"messages", "input"})
    ELEMENT_MIN_CHARS = 128  # shorter ones cost less to parse than to look up; and the key lies within
    ELEMENT_KEY_CHARS = 128
    PER_ELEMENT_KEY = 4
    ELEMENT_CHARS_MAX = 4 * 1024 * 1024

    def __init__(self) -> None:
        self._recent: dict[str, list[tuple[str, Any]]] = {}
        self._elements: OrderedDict[str, list[tuple[str, Any]]] = OrderedDict()
        self._element_chars = 0
        self._lock = threading.Lock()

    def find(self, key: str, text: str, start: int) -> tuple[Any, int] | None:
        """(value, end) of a remembered value of `key` that `text` repeats at `start`."""
        if key not in self.MEMBERS or text[start : start + 1] not in ("[", "{"):
            return None
        with self._lock:
            return _repeated(self._recent.get(key, []), text, start)

    def remember(self, key: str, raw: str, value: Any) -> None:
        if key not in self.MEMBERS or len(raw) < self.MIN_CHARS or not isinstance(value, list | dict):
            return
        with self._lock:
            recent = self._recent.setdefault(key, [])
            recent.insert(0, (raw, value))
            del recent[self.PER_MEMBER :]

    def parse_elements(self, text: str, start: int) -> tuple[list[Any], int]:
        """(list, end) of the JSON array at `start`, its remembered elements not parsed again; raises
        ValueError where the array is malformed."""
        items: list[Any] = []
        index = _skip_whitespace(text, start + 1)
        if text[index : index + 1] == "]":
            return items, index + 1
        while True:
            key = text[index : index + self.ELEMENT_KEY_CHARS]
            with self._lock:
                candidates = self._elements.get(key)
                found = _repeated(candidates, text, index) if candidates else None
                if found is not None:
                    self._elements.move_to_end(key)
            if found is None:
                value, end = _DECODER.raw_decode(text, index)
                if end - index >= self.ELEMENT_MIN_CHARS and text[index] in "[{":
                    raw = text[index:end]
                    if MARKER not in raw:
                        self._keep_element(key, raw, value)
            else:
                value, end = found
            items.append(value)
            index = _skip_whitespace(text, end)
            if text[index : index + 1] == "]":
                return items, index + 1
            if text[index : index + 1] != ",":
                raise ValueError(f"expected ',' or ']' at {index}")
            index = _skip_whitespace(text, index + 1)

    def _keep_element(self, key: str, raw: str, value: Any) -> None:
        with self._lock:
            candidates = self._elements.setdefault(key, [])
            self._elements.move_to_end(key)
            candidates.insert(0, (raw, value))
            self._element_chars += len(raw)
            for old, _ in candidates[self.PER_ELEMENT_KEY :]:
                self._element_chars -= len(old)
            del candidates[self.PER_ELEMENT_KEY :]
            while self._element_chars > self.ELEMENT_CHARS_MAX and self._elements:
                _, evicted = self._elements.popitem(last=False)
                self._element_chars -= sum(len(old) for old, _ in evicted)


def _repeated(recent: list[tuple[str, Any]], text: str, start: int) -> tuple[Any, int] | None:
    """The remembered (value, end) whose text `text` repeats at `start`, moved to the front; the caller
    holds the memo's lock."""
    for index, (raw, value) in enumerate(recent):
        if text.startswith(raw, start):
            if index:
                recent.insert(0, recent.pop(index))
            return value, start + len(raw)
    return None


def parse_object_with_spans(text: str, memo: MemberMemo | None = None) -> tuple[JSONObject, Spans] | None:
    """`parse_json` of a JSON object, also returning where each member's value lies in `text`.

    Lets a rewrite copy the members no rule touched straight from the client's text instead of
    re-serializing them (on an agent's request they are nearly all of it: messages, tools). Keys and values
    are parsed by the C scanner with `parse_json`'s exact settings; with a `memo`, a large member the
    request repeats verbatim is not parsed again (see MemberMemo). Returns None for anything but a
    well-formed object; the caller then calls `parse_json`, which raises the right error.
    """
    index = _skip_whitespace(text, 0)
    if text[index : index + 1] != "{":
        return None
    index = _skip_whitespace(text, index + 1)
    pairs: list[tuple[str, Any]] = []
    spans: Spans = {}
    try:
        while text[index : index + 1] == '"':
            key, index = _DECODER.raw_decode(text, index)
            index = _skip_whitespace(text, index)
            if text[index : index + 1] != ":":
                return None
            start = _skip_whitespace(text, index + 1)
            known = memo.find(key, text, start) if memo is not None else None
            if known is not None:
                value, index = known
            elif memo is not None and key in memo.ELEMENTS and text[start : start + 1] == "[":
                value, index = memo.parse_elements(text, start)
            else:
                value, index = _DECODER.raw_decode(text, start)
                if memo is not None:
                    memo.remember(key, text[start:index], value)
            pairs.append((key, value))
            spans[key] = (start, index)
            index = _skip_whitespace(text, index)
            if text[index : index + 1] != ",":
                break
            index = _skip_whitespace(text, index + 1)
        if text[index : index + 1] != "}" or _skip_whitespace(text, index + 1) != len(text):
            return None
        return _object_without_duplicates(pairs), spans
    except ValueError:
        return None


def _skip_whitespace(text: str, index: int) -> int:
    if text[index : index + 1] not in _WHITESPACE_CHARS:  # compact JSON, as SDKs send it: no regex needed
        return index
    match = _WHITESPACE.match(text, index)
    return match.end() if match else index


_WHITESPACE_CHARS = frozenset(" \t\n\r")


# One encoder, built once: `JSONEncoder.encode` on a str is the C string escaper (json.dumps with
# non-default options would build a new encoder per call, which dominates the cost on large bodies).
_STRING_ENCODER = json.JSONEncoder(ensure_ascii=False)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def dump_json(value: Any) -> bytes:
    """Compact, deterministic UTF-8 JSON (RFC 8259 §8.1); raises TypeError/ValueError on non-JSON data."""
    return _utf8(_dump_text(value))


def dump_json_spliced(value: JSONObject, original: JSONObject, text: str, spans: Spans) -> bytes:
    """`dump_json(value)`, except that a member whose value is still the very object `original` held is
    copied from `text` (the client's bytes, as `parse_object_with_spans` found them) rather than
    re-serialized: the same JSON, byte for byte as the client wrote it, for a fraction of the work."""
    parts: list[str] = ["{"]
    for index, (key, item) in enumerate(value.items()):
        parts.append(("," if index else "") + _STRING_ENCODER.encode(key) + ":")
        span = spans.get(key)
        if span is not None and key in original and original[key] is item:
            parts.append(text[span[0] : span[1]])
        else:
            parts.append(_dump_text(item))
    parts.append("}")
    return _utf8("".join(parts))


class _NotExact(TypeError):
    """A number the C encoder would not write back exactly as the client wrote it."""


def _exact_number(value: object) -> int | float:
    # The C encoder's fallback for what it does not know: a RawNumber becomes the int or float whose
    # own text is exactly the client's (0.5, 42), else the slow path writes the text itself (1e400, 0.10).
    if isinstance(value, RawNumber):
        text = value.text
        try:
            number: int | float = int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError:  # an integer over the digit limit
            raise _NotExact(text) from None
        if repr(number) == text:
            return number
        raise _NotExact(text)
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


def compact_encoder(default: Callable[[object], object], *, allow_nan: bool) -> Callable[[object], str]:
    """Compact JSON text of a value, `ensure_ascii=False`, built once; `default` is called for what JSON has
    no type for.

    `json.dumps` with options builds a new encoder per call, and `JSONEncoder.encode` a new C encoder per
    call: ~40% of the cost of encoding a small block. The C encoder itself is reusable (no circular-reference
    markers: parsed JSON has no cycles).
    """
    make = getattr(json.encoder, "c_make_encoder", None)  # not in typeshed: CPython's C accelerator
    if make is None:  # no C accelerator: the pure-Python encoder
        return json.JSONEncoder(
            ensure_ascii=False, separators=(",", ":"), default=default, allow_nan=allow_nan
        ).encode
    encode = make(None, default, json.encoder.encode_basestring, None, ":", ",", False, False, allow_nan)
    return lambda value: "".join(encode(value, 0))


_EXACT_ENCODER = compact_encoder(_exact_number, allow_nan=False)  # NaN is not JSON


def _dump_text(value: Any) -> str:
    """Compact JSON text of a value: the C encoder where it writes every number exactly, else `_dump`."""
    try:
        return _EXACT_ENCODER(value)
    except _NotExact:
        parts: list[str] = []
        _dump(value, parts)
        return "".join(parts)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A "\ud800" escape the client sent decodes to a lone surrogate, which UTF-8 cannot carry: write it
        # back as the escape. Outside strings the output is ASCII, so only string contents are affected.
        return _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text).encode("utf-8")


def _dump(value: Any, parts: list[str]) -> None:
    if isinstance(value, dict):
        parts.append("{")
        for index, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"object key {key!r} is not a string")
            parts.append(("," if index else "") + _STRING_ENCODER.encode(key) + ":")
            _dump(item, parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _dump(item, parts)
        parts.append("]")
    elif isinstance(value, str):
        parts.append(_STRING_ENCODER.encode(value))
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, RawNumber):
        parts.append(value.text)
    elif isinstance(value, int | float):
        parts.append(json.dumps(value, allow_nan=False))
    else:
        raise TypeError(f"not JSON-serializable: {type(value).__name__}")


# --- system blocks ----------------------------------------------------------------------------------


def select_system_blocks(
    blocks: Iterable[SystemBlock], host: str, client: str | None, models: Iterable[str]
) -> list[SystemBlock]:
    """The configured blocks whose scope admits this call; an empty scope list admits everything.

    `hosts` and `models` entries may be `*` globs (`claude-opus-*`); hosts compare case-insensitively.
    `models` are the names the call goes by (the requested one and its alias target). A scoped block never
    applies to a call whose client or model is unknown.
    """
    model_names = [name for name in models if name]
    selected = []
    for block in blocks:
        if block.hosts and not any(fnmatchcase(host.lower(), pattern.lower()) for pattern in block.hosts):
            continue
        if block.clients and client not in block.clients:
            continue
        if block.models and not any(
            fnmatchcase(name, pattern) for pattern in block.models for name in model_names
        ):
            continue
        selected.append(block)
    return selected


def inject_system_blocks(body: JSONObject, blocks: Sequence[SystemBlock], wire: WireFormat) -> JSONObject:
    """Append the operator's system blocks after the request's own, as the wire format takes them (its
    `inject_system`: Anthropic's `system` array, OpenAI chat's leading messages, Responses' `instructions`);
    fails open.

    Idempotent: a block whose text is already there is not added again, so applying twice equals applying
    once. Deterministic: the output depends on the body and the blocks alone, so every turn of a
    conversation gets the same bytes (prompt caches and Anthropic's thinking blocks depend on the prefix).
    A body whose shape the wire format does not know is returned unchanged.
    """
    return _inject(body, blocks, wire)[0]


def _inject(
    body: JSONObject, blocks: Sequence[SystemBlock], wire: WireFormat
) -> tuple[JSONObject, list[str], list[Any]]:
    """`inject_system_blocks`, also returning the names added and where the new blocks lie (for the wire
    format's cache markers)."""
    if not blocks or wire.inject_system is None:
        return body, [], []
    return wire.inject_system(body, blocks)


def new_blocks(blocks: Sequence[SystemBlock], present: set[str]) -> list[SystemBlock]:
    """Blocks whose text is not already present, first occurrence only, in configured order."""
    seen = set(present)
    result = []
    for block in blocks:
        if block.text not in seen:
            seen.add(block.text)
            result.append(block)
    return result


# --- identity, model -------------------------------------------------------------------------------------


def stamp_user_id(body: JSONObject, user_id: str | None, wire: WireFormat) -> JSONObject:
    """Set the end-user id where the wire format keeps it (its `stamp_user`: Anthropic's
    `metadata.user_id`, OpenAI's `safety_identifier`) when the request carries none; never overwrites one;
    fails open. An absent or null field counts as missing; any other value, even "", is the client's.
    """
    if not user_id or wire.stamp_user is None:
        return body
    return wire.stamp_user(body, user_id)


def alias_model(body: JSONObject, aliases: dict[str, str]) -> JSONObject:
    """Replace `model` by its alias target (exact, case-sensitive match), in place in the key order.

    Fails open: an unknown or non-string model is forwarded as sent, and the provider answers it.
    """
    model = body.get("model")
    if not isinstance(model, str) or model not in aliases or aliases[model] == model:
        return body
    return {**body, "model": aliases[model]}


# --- billing block ----------------------------------------------------------------------------------


def should_strip_billing_block(wire: WireFormat, host: str, setting: bool | None) -> bool:
    """`Upstream.strip_billing_header`: an explicit setting wins; unset, strip for every host but the
    provider's own API hosts.

    A client's attribution block (Claude Code's at Anthropic's system[0]) is dropped by the provider's own
    API by position; a gateway or another backend would feed it to the model as prompt text.
    """
    if setting is not None:
        return setting
    return host.lower().rstrip(".") not in wire.provider.hosts


# --- the entry point --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What the addon knows about a call: its wire format (the rules it declares and their hooks), where
    it goes and who sends it."""

    wire: WireFormat
    host: str
    rules: Rules
    client: str | None = None
    user_id: str | None = None
    strip_billing_block: bool = False
    content_encoding: str | None = None  # the request's Content-Encoding header, if any
    memo: MemberMemo | None = None  # the addon's, shared by its calls: large repeated members parsed once


@dataclass(frozen=True, slots=True)
class RuleResult:
    """What `apply_request_rules` decided.

    `body` is None when the original bytes must be forwarded untouched. `client_asked_usage` is False only
    when sluice turned on stream usage (OpenAI chat's) for a client that did not ask: exactly then the
    addon drops usage-only chunks (the wire format's `usage_only_chunk`) before they reach the client.
    `model` is the model the request goes upstream with (after aliasing), `stream` whether it asks for a
    stream.
    """

    body: bytes | None
    applied: list[str] = field(default_factory=list)
    note: str | None = None
    client_asked_usage: bool = True
    model: str | None = None
    stream: bool = False
    # The body as parsed (numbers as RawNumber) before and after the rules; `rewritten is parsed` when
    # nothing changed. None when the body was not read. For later readers, so nothing parses it twice.
    parsed: JSONObject | None = None
    rewritten: JSONObject | None = None


def apply_request_rules(raw: bytes, ctx: RuleContext) -> RuleResult:
    """Apply every configured rule to one request body; the only function the rewrite addon calls.

    Fails open, never raises: a compressed, non-UTF-8, malformed, too deeply nested or non-object body, one
    with duplicate keys, a wire format with no rules, or any failure inside a rule forwards the original bytes
    (body None) with a `note`. When no rule changes anything, body is None too and the bytes go out exactly
    as sent.
    Order: billing block, model alias, system blocks, user id, max_tokens, cache cap, TTL order, stream usage.
    """
    encoding = (ctx.content_encoding or "").strip().lower()
    if encoding not in {"", "identity"}:
        return RuleResult(None, note=f"body is compressed ({encoding})")
    wire = ctx.wire
    if not wire.rule_set:
        return RuleResult(None, note=f"no rules for {wire.provider.name} {wire.name}")
    if not raw.strip():
        return RuleResult(None, note="body is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return RuleResult(None, note="body is not UTF-8")
    try:
        found = parse_object_with_spans(text, ctx.memo)
        parsed, spans = found if found is not None else (parse_json(text), None)
    except _DuplicateKeyError:
        return RuleResult(None, note="body has duplicate keys")
    except RecursionError:  # the C scanner's depth limit: raised at once, never after quadratic work
        return RuleResult(None, note="body nests too deeply")
    except ValueError:
        return RuleResult(None, note="body is not JSON")
    if not isinstance(parsed, dict):
        return RuleResult(None, note="not a JSON object")

    def dump(body: JSONObject) -> bytes:
        return dump_json(body) if spans is None else dump_json_spliced(body, parsed, text, spans)

    try:
        return _apply(parsed, ctx, dump)
    except RecursionError:
        return RuleResult(None, note="body nests too deeply")
    except Exception as e:  # a rule bug must not take the request down: forward it untouched
        return RuleResult(None, note=f"rules failed: {type(e).__name__}: {e}")


def _apply(original: JSONObject, ctx: RuleContext, dump: Callable[[JSONObject], bytes]) -> RuleResult:
    # Each rule runs only where the wire format declares it (`rule_set`), through the wire format's hook.
    rules, wire = ctx.rules, ctx.wire
    rule_set = wire.rule_set
    body = original
    applied: list[str] = []
    client_asked_usage = True

    if "billing" in rule_set and ctx.strip_billing_block:
        body, changed = _step(body, _hook(wire.strip_billing)(body))
        if changed:
            applied.append("billing_block")

    requested = body.get("model") if isinstance(body.get("model"), str) else None
    if "alias" in rule_set:
        body, changed = _step(body, alias_model(body, rules.model_aliases))
        if changed:
            applied.append(f"model_alias:{requested}->{body['model']}")
    model = body.get("model") if isinstance(body.get("model"), str) else None

    sluice_paths: list[Any] = []
    if "system" in rule_set and rules.system_blocks:
        names = [name for name in (requested, model) if name]
        blocks = select_system_blocks(rules.system_blocks, ctx.host, ctx.client, names)
        body, added, sluice_paths = _inject(body, blocks, wire)
        applied.extend(f"system_block:{name}" for name in added)

    if "user_id" in rule_set:
        body, changed = _step(body, stamp_user_id(body, ctx.user_id, wire))
        if changed:
            applied.append("user_id")

    if "max_tokens" in rule_set:
        body, changed = _step(body, _hook(wire.backfill_max_tokens)(body, rules.max_tokens_default))
        if changed:
            applied.append("max_tokens")

    if "cache" in rule_set:
        body, done = _hook(wire.mark_cache)(body, rules.cache_control_max, sluice_paths)
        applied.extend(done)

    if "stream_usage" in rule_set and rules.openai_include_usage:
        new_body, client_asked = _hook(wire.request_stream_usage)(body)
        body, changed = _step(body, new_body)
        if changed:
            applied.append("stream_usage")
            client_asked_usage = client_asked

    stream = body.get("stream") is True
    if not applied:
        return RuleResult(None, model=model, stream=stream, parsed=original, rewritten=original)
    return RuleResult(
        dump(body),
        applied,
        client_asked_usage=client_asked_usage,
        model=model,
        stream=stream,
        parsed=original,
        rewritten=body,
    )


def _hook[F](hook: F | None) -> F:
    """The hook of a rule the wire format declares (WireFormat refuses to be built without it)."""
    if hook is None:
        raise TypeError("a declared request rule has no hook")
    return hook


def _step(before: JSONObject, after: JSONObject) -> tuple[JSONObject, bool]:
    return after, after is not before
