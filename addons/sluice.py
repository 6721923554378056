"""sluice: run with `mitmdump -s addons/sluice.py` (or mitmweb).

mitmproxy puts only this file's folder on sys.path; the repository root is added so the `addons`, `rules`
and `state` packages import the same way whether or not sluice is pip-installed.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from addons.core import SluiceCore  # noqa: E402
from addons.meter import Meter  # noqa: E402

core = SluiceCore()
addons = [core, Meter(core)]
