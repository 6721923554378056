"""sluice: run with `mitmdump -s addons/sluice.py` (or mitmweb).

mitmproxy puts only this file's folder on sys.path; the repository root is added so the `addons`, `rules`
and `state` packages import the same way whether or not sluice is pip-installed.

Order matters: mitmproxy calls each hook on these addons in list order. Request side: a request that
involves a credential host goes exactly where it says, over TLS (confine), in a sandbox only by name to a
permitted host (sandbox), who is calling (gate), rewrite
the body, admit against the client's budget, filter headers, meter what goes upstream, and last choose
the real credential, which is written into the request only as it is sent (never onto the flow) and only
onto a connection to that host. Response side: filter headers, scrub an echoed credential out of the
answer, tee the stream, judge the credential by the answer. Off the request path, quota_poll reads each
OAuth login's subscription usage every `sluice_quota_poll` seconds (off by default).

What mitmweb shows: what the rewrite changed is kept on the flow just after it (changes); each call's
prompt-cache health is judged as its row is built (cache_health, through the meter's `before_record`);
the "LLM" contentview renders both.

Operations (not security parts): Prometheus metrics, OpenTelemetry spans and webhook alerts run in a process
of their own (ops/), fed each finished row by the ops feed (addons/ops_feed.py), off the request path.

mitmproxy sees one addon, `sluice` (addons/chain.py), which calls the parts' hooks in this order. The pairs
that must stay in order, and why, are data in addons/order.py; the chain refuses to start with a list that
breaks one, naming the pair.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from addons import contentview  # noqa: E402
from addons.budget import Budget  # noqa: E402
from addons.cache_health import CacheHealth  # noqa: E402
from addons.chain import Chain  # noqa: E402
from addons.changes import RequestChanges  # noqa: E402
from addons.confine import Confinement  # noqa: E402
from addons.core import SluiceCore  # noqa: E402
from addons.credentials import Credentials  # noqa: E402
from addons.echo import EchoScrub  # noqa: E402
from addons.framing import Framing  # noqa: E402
from addons.gate import Gate  # noqa: E402
from addons.headers import Headers  # noqa: E402
from addons.meter import Meter  # noqa: E402
from addons.ops_feed import OpsFeed  # noqa: E402
from addons.quota_poll import QuotaPoll  # noqa: E402
from addons.rewrite import Rewrite  # noqa: E402
from addons.sandbox import Sandbox  # noqa: E402
from addons.upstream_errors import UpstreamErrors  # noqa: E402
from addons.watchdog import Watchdog  # noqa: E402

core = SluiceCore()
cache_health = CacheHealth(core)
credentials = Credentials(core)
# Operations: the feed hands each finished row to the ops process (metrics, tracing, alerts).
ops_feed = OpsFeed(core)
contentview.register()
parts = [
    core,
    Confinement(core),
    Sandbox(core),
    Gate(core),
    Rewrite(core),
    RequestChanges(core),
    Budget(core),
    Headers(core),
    Framing(),
    EchoScrub(core, credentials),
    UpstreamErrors(core),
    # The ops feed sees each row after cache health has judged it.
    Meter(core, before_record=[cache_health.before_record, ops_feed.before_record]),
    cache_health,
    Watchdog(core),
    credentials,
    QuotaPoll(core, credentials),
]
# After every other part: its `done` runs after the core's, once the calls still in flight have their rows.
parts.append(ops_feed)
addons = [Chain("sluice", parts)]
