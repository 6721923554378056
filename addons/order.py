"""The order sluice's parts must run in, as data: each pair that would silently switch a feature off (or
let something through) if the two were swapped, and why.

mitmproxy calls each hook on the parts in list order (addons/chain.py), so what one part reads another must
have written by then: the record the core creates, the destination confinement settles, the client the gate
names, the body the rewrite leaves, the headers the credential swap sends. `check` is run by the chain when
it is built: a list that breaks any pair stops start-up, naming the pair and the reason (fails closed).

A name is a part's class name; `ANY` stands for every other part; `Class.before_record` is one of the meter's
observers, which it calls in their list order as each call's row is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ANY = "*"


@dataclass(frozen=True, slots=True)
class Before:
    before: str
    after: str
    why: str
    security: bool = False  # swapped, a credential, a client or a body would get through unchecked


ORDER: tuple[Before, ...] = (
    Before(
        "SluiceCore",
        ANY,
        "the core loads the config every part configures itself from, and creates the call record every part "
        "reads, in the same hooks",
    ),
    Before(
        "Confinement",
        "Gate",
        "in transparent mode confinement re-points a request that names a credential host at that host; "
        "before that the gate sees the connection's address, no credential host, and lets a request without "
        "a client key through to the credential swap",
        security=True,
    ),
    Before(
        "Confinement",
        "Headers",
        "the header allow-list is the destination's provider's; before confinement re-points a transparent "
        "request the destination is an address with no policy, and cookies pass",
        security=True,
    ),
    Before(
        "Confinement",
        "Credentials",
        "a credential is chosen for the destination confinement settles: before it re-points a transparent "
        "request none is chosen, and the request goes upstream with the client's key",
    ),
    Before(
        "Sandbox",
        "Headers",
        "in a sandbox the request goes to the name it asked for only once the sandbox re-points it; before "
        "that its provider's header allow-list does not apply",
        security=True,
    ),
    Before(
        "Gate",
        "Rewrite",
        "per-client request rules and the end-user id need the client the gate names",
    ),
    Before(
        "Gate",
        "Budget",
        "budgets are per client: before the gate names the client no call has a budget, and every one is "
        "admitted",
        security=True,
    ),
    Before(
        "Gate",
        "Credentials",
        "a credential is chosen only for a request the gate admitted, routed by the client it named",
    ),
    Before(
        "Rewrite",
        "RequestChanges",
        "what the rewrite changed is shown from the bodies it parsed and produced",
    ),
    Before(
        "Rewrite",
        "Budget",
        "the budget estimates the call from the model and max_tokens it really goes out with (the rewritten "
        "body); before the rewrite it has no body read and holds the provider's highest price",
    ),
    Before(
        "Rewrite",
        "CacheHealth",
        "the prompt's shape is read from the body as it goes upstream, which the rewrite leaves",
    ),
    Before(
        "Rewrite",
        "Meter",
        "the row's request size, model and stream are those of the body as it goes upstream",
    ),
    Before(
        "Rewrite",
        "Credentials",
        "the credential swap fixes the headers sent on the wire: a rewrite after it would send a new body "
        "with the old Content-Length",
        security=True,
    ),
    Before(
        "Budget",
        "Meter",
        "the budget prices what the rewrite read (no model where it read no body); the meter fills the model "
        "in for the row only after",
    ),
    Before(
        "Budget",
        "Credentials",
        "a credential is chosen (and a conversation pinned to it) only for a call the budget admitted",
    ),
    Before(
        "Headers",
        "Credentials",
        "the credential swap fixes the headers sent on the wire: the allow-list must have filtered them "
        "first, or what it drops (cookies) goes upstream with the real credential",
        security=True,
    ),
    Before(
        "Framing",
        "Credentials",
        "the credential swap fixes the headers sent on the wire: without the Content-Length framing adds, an "
        "HTTP/1.1 upstream reads the body as the next request",
        security=True,
    ),
    Before(
        "EchoScrub",
        "Meter",
        "the row is built from the answer: an echoed credential must be scrubbed out of it first, or the "
        "database keeps it",
        security=True,
    ),
    Before(
        "EchoScrub",
        "Credentials",
        "the echo scrub knows the credential from the swap until its answer is judged: after the credential "
        "part's response hook it knows none, and the answer reaches the client unscrubbed",
        security=True,
    ),
    Before(
        "UpstreamErrors",
        "Meter",
        "the meter's error hook ends the call's record; the error envelope of a call on a host sluice does "
        "not know comes from the record's provider",
    ),
    Before(
        "Meter",
        "CacheHealth",
        "cache health forgets a call's prompt shape in its response hook, after the meter has built (or "
        "scheduled) the row that judges it",
    ),
    Before(
        "Meter",
        "Watchdog",
        "the watchdog watches the streams the meter reads (its stream reader, made in responseheaders)",
    ),
    Before(
        "Meter",
        "Credentials",
        "the row records the provider's own answer, before the credential part may replace it with advice "
        "to retry on another credential",
    ),
    Before(
        "CacheHealth.before_record",
        "OpsFeed.before_record",
        "the ops feed hands on the row with the cache verdict cache health adds to it",
    ),
    Before(
        "SluiceCore",
        "OpsFeed",
        "at shutdown the core's done writes the rows of the calls still in flight, which the ops feed's done "
        "must still hand on",
    ),
)


class PartOrderError(ValueError):
    """The parts' list breaks a pair of ORDER."""

    def __init__(self, broken: Sequence[Before]) -> None:
        self.broken = list(broken)
        lines = [f"{rule.before} must run before {rule.after}: {rule.why}" for rule in broken]
        super().__init__("sluice: the parts are out of order:\n  " + "\n  ".join(lines))


def name_of(part: object) -> str:
    """A part's name in ORDER: its class name; a bound method (an observer) as `Class.method`."""
    owner = getattr(part, "__self__", None)
    if owner is not None:
        return f"{type(owner).__name__}.{getattr(part, '__name__', '?')}"
    return type(part).__name__


def run_orders(parts: Sequence[object]) -> list[list[str]]:
    """The sequences things run in: the parts, and each part's observers (the meter's `before_record`)."""
    orders = [[name_of(part) for part in parts]]
    for part in parts:
        observers = getattr(part, "before_record", None)
        if isinstance(observers, list):
            orders.append([name_of(observer) for observer in observers])
    return orders


def broken_pairs(parts: Sequence[object], order: Iterable[Before] = ORDER) -> list[Before]:
    """Each pair of `order` whose two parts are both in `parts` (or the same observer list) the wrong way
    round. A pair with a part missing holds: there is nothing to run out of order."""
    broken = []
    sequences = run_orders(parts)
    for rule in order:
        for names in sequences:
            if rule.before not in names:
                continue
            first = names.index(rule.before)
            if rule.after == ANY:
                if first != 0:
                    broken.append(rule)
            elif rule.after in names and names.index(rule.after) < first:
                broken.append(rule)
    return broken


def check(parts: Sequence[object], order: Iterable[Before] = ORDER) -> None:
    """Raise PartOrderError naming every broken pair."""
    broken = broken_pairs(parts, order)
    if broken:
        raise PartOrderError(broken)
