"""Where a sandboxed command may connect: the sandbox's egress policy (`[sandbox] allow` in the config).

An entry is a host name (`pypi.org`: any port), a name with a port (`github.com:443`), or a family of
names (`*.githubusercontent.com`: every name under it, not the name itself). Names compare without case
or a trailing dot. Pure: the sandbox addon (addons/sandbox.py) asks, with the name sluice itself will
connect to, never an address the command chose.

Fails closed: a name matches only an entry it spells out; no entry, no connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rules.destination import normalize_host

_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One `[sandbox] allow` entry: a name (or, with `family`, every name under it) and a port or None."""

    name: str
    port: int | None
    family: bool = False

    def matches(self, host: str, port: int) -> bool:
        host = normalize_host(host)
        if self.port is not None and port != self.port:
            return False
        return host.endswith("." + self.name) if self.family else host == self.name


def parse_allow_entry(text: str) -> AllowEntry:
    """`name`, `name:port` or `*.name`(`:port`); raises ValueError saying what is wrong."""
    name, colon, port_text = text.strip().rpartition(":")
    if not colon:
        name, port_text = port_text, ""
    port: int | None = None
    if colon:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: the port after ':' must be a number from 1 to 65535")
        port = int(port_text)
    family = name.startswith("*.")
    name = normalize_host(name.removeprefix("*."))
    address = name.replace(".", "").isdigit()
    if (
        address
        or not name
        or not set(name) <= _NAME_CHARACTERS
        or ".." in name
        or name.startswith((".", "-"))
    ):
        raise ValueError(
            f"{text!r}: expected a host name (pypi.org), a name and port (github.com:443) or a family "
            "of names (*.example.com); addresses and other wildcards are not accepted"
        )
    return AllowEntry(name, port, family)


def names(entries: Iterable[AllowEntry], host: str) -> bool:
    """Whether some entry names `host`, on whatever port (what a DNS answer is given for)."""
    return any(entry.matches(host, entry.port or 0) for entry in entries)


def is_allowed(entries: Iterable[AllowEntry], host: str, port: int) -> bool:
    """Whether a connection by `host` to `port` is allowed by any entry."""
    return any(entry.matches(host, port) for entry in entries)
