"""sluice: run with `mitmdump -s addons/sluice.py` (or mitmweb).

mitmproxy puts only this file's folder on sys.path; the repository root is added so the `addons`, `rules`
and `state` packages import the same way whether or not sluice is pip-installed.

Order matters: mitmproxy calls each hook on these addons in list order. Request side: a request that
involves a credential host goes exactly where it says, over TLS (confine), in a sandbox only by name to a
permitted host (sandbox), who is calling (gate), rewrite
the body, admit against the client's budget, filter headers, meter what goes upstream, and last choose
the real credential, which is written into the request only as it is sent (never onto the flow) and only
onto a connection to that host. Response side: filter headers, scrub an echoed credential out of the
answer, tee the stream, judge the credential by the answer.

What mitmweb shows: what the rewrite changed is kept on the flow just after it (changes); each call's
prompt-cache health is judged as its row is built (cache_health, through the meter's `before_record`);
the "LLM" contentview renders both.

mitmproxy sees one addon, `sluice` (addons/chain.py), which calls the parts' hooks in this order.
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
from addons.rewrite import Rewrite  # noqa: E402
from addons.sandbox import Sandbox  # noqa: E402
from addons.upstream_errors import UpstreamErrors  # noqa: E402
from addons.watchdog import Watchdog  # noqa: E402

core = SluiceCore()
cache_health = CacheHealth(core)
credentials = Credentials(core)
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
    Meter(core, before_record=[cache_health.before_record]),
    cache_health,
    Watchdog(core),
    UpstreamErrors(core),
    credentials,
]
addons = [Chain("sluice", parts)]
