"""Start-up errors a person can act on: one short block on stderr, no traceback, before the proxy listens.

mitmproxy logs an error raised by a script's `configure` with its traceback, starts listening, and only
then exits. For a typo in the config (or in a `--set sluice_...` name) that is a wall of text about
mitmproxy's internals around one line that matters. While mitmproxy is starting from the command line
(mitmdump, mitmweb, mitmproxy: their `errorcheck` addon would stop it anyway), sluice prints the problem
itself and exits with status 1, as mitmproxy does for a bad option. Later (an option changed in mitmweb's
options editor) and in tests, the error stays an `OptionsError`, which mitmproxy shows and the change is
refused.

Fails closed: a problem at start-up always stops it.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Mapping

from mitmproxy import ctx, exceptions

from addons import mitm_internals
from rules.config import ConfigError

EXIT_STATUS = 1  # as mitmproxy itself exits on a bad option


class StartupError(exceptions.OptionsError):
    """An option sluice cannot start with, with the lines to show for it."""

    def __init__(self, option: str, message: str, lines: Iterable[str]) -> None:
        super().__init__(f"{option}: {message}")
        self.lines = list(lines)


def config_error(option: str, error: ConfigError) -> StartupError:
    """A `ConfigError` as a start-up error: the file, then one line per field."""
    return StartupError(option, str(error), error.block().splitlines())


def lines_for(error: exceptions.OptionsError, config_path: str | None = None) -> list[str]:
    """What to print for an option error: its own lines, or, for a problem a part found in the config
    after it loaded (`sluice_config PATH: field: reason[; field: reason]`, an env: reference not set), the
    file and then each field."""
    if isinstance(error, StartupError):
        return error.lines
    message = str(error)
    if config_path:
        for prefix in (f"sluice_config {config_path}: ", f"sluice_config: {config_path}: "):
            if message.startswith(prefix):
                return [f"file: {config_path}", *message.removeprefix(prefix).split("; ")]
    return message.splitlines()


def starting_from_command_line() -> bool:
    """Whether mitmproxy is starting from its command line: its tools install the `errorcheck` addon,
    which stops start-up after any error; a test's master does not."""
    return mitm_internals.starting_from_command_line()


def exit_with(error: exceptions.OptionsError) -> None:
    """Print the error as one block on stderr and stop the process (status 1)."""
    options = ctx.options
    lines = lines_for(error, options.sluice_config if "sluice_config" in options else None)
    text = "\n".join(["sluice: cannot start:", *(f"  {line}" for line in lines)])
    print(text, file=sys.stderr, flush=True)
    raise SystemExit(EXIT_STATUS)


def unknown_sluice_options(deferred: Mapping[str, object], known: Iterable[str]) -> list[str]:
    """Each `--set sluice_...` name no part of sluice defines, with the option it probably meant.

    mitmproxy keeps a `--set` it does not know aside ("deferred") in case a later addon defines it, and
    says nothing: `--set sluice_conifg=x.toml` would start a record-only proxy without a word.
    """
    names = sorted(name for name in known if name.startswith("sluice_"))
    problems = []
    for name in sorted(deferred):
        if not name.lower().startswith("sluice"):
            continue
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f' (did you mean "{close[0]}"?)' if close else f" (sluice's options: {', '.join(names)})"
        problems.append(f"--set {name}: unknown option{hint}")
    return problems


def check_options() -> None:
    """Refuse a `--set sluice_...` name that no part of sluice defines (see `unknown_sluice_options`)."""
    options = ctx.options
    problems = unknown_sluice_options(mitm_internals.deferred_options(options), options.keys())
    if problems:
        raise StartupError("--set", "; ".join(problems), problems)


def check_mitmproxy() -> None:
    """Refuse to start on a mitmproxy that lacks an internal sluice relies on, naming it; warn (in the log)
    on one the contract tests were not run on (addons/mitm_internals.py)."""
    try:
        mitm_internals.check_startup()
    except mitm_internals.MissingInternals as e:
        lines = [f"mitmproxy {mitm_internals.mitmproxy_version()} lacks what sluice relies on:"]
        lines += [f"  {name}" for name in e.missing]
        lines.append(f"sluice was verified against mitmproxy {', '.join(mitm_internals.VERIFIED_VERSIONS)}")
        lines.append(f"what changed: pytest {mitm_internals.CONTRACT_TESTS}")
        raise StartupError("mitmproxy", str(e), lines) from None
