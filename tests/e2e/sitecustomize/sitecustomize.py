"""Test-only name resolution, loaded by Python at start-up in the mitmdump subprocess (via PYTHONPATH).

`SLUICE_TEST_HOSTS="api.anthropic.com=127.0.0.1:PORT,api.openai.com=127.0.0.1:PORT"` makes those names
resolve to the fake provider, port included. An entry for `name:port` (`api.anthropic.com:80=127.0.0.1:P`)
sends only connections to that port of the name elsewhere (the hostile suite's traps), and wins over `name`.
Flows are never rewritten: mitmproxy still connects to `api.anthropic.com:443` (same Host, same SNI,
same flow address), but its `asyncio.open_connection` resolves through `loop.getaddrinfo`, which looks up
`socket.getaddrinfo` at call time and so lands here. Every other name resolves as usual. Without the
variable this module does nothing.
"""

from __future__ import annotations

import os
import socket
import sys

_real_getaddrinfo = socket.getaddrinfo


def parse_hosts(spec: str) -> dict[str, tuple[str, int]]:
    """`name[:port]=ip:port,...` → {name or name:port: (ip, port)}; raises ValueError on a malformed entry."""
    hosts: dict[str, tuple[str, int]] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, target = entry.partition("=")
        address, colon, port = target.rpartition(":")
        if not (sep and colon and name and address and port.isdigit()):
            raise ValueError(f"SLUICE_TEST_HOSTS: expected name=ip:port, got {entry!r}")
        bare, has_port, only_port = name.strip().lower().partition(":")
        if has_port and not only_port.isdigit():
            raise ValueError(f"SLUICE_TEST_HOSTS: expected name:port=ip:port, got {entry!r}")
        key = bare.rstrip(".") + (f":{int(only_port)}" if has_port else "")
        hosts[key] = (address.strip("[]"), int(port))
    return hosts


def _install(hosts: dict[str, tuple[str, int]]) -> None:
    # Same parameter names as socket.getaddrinfo: callers pass them by keyword.
    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode("idna") if isinstance(host, bytes) else host
        name = name.lower().rstrip(".") if name else None
        target = hosts.get(f"{name}:{port}") or hosts.get(name) if name else None
        if target is not None:
            return _real_getaddrinfo(target[0], target[1], family, type, proto, flags)
        return _real_getaddrinfo(host, port, family, type, proto, flags)

    socket.getaddrinfo = getaddrinfo
    for name, (address, port) in hosts.items():
        print(f"sitecustomize: {name} resolves to {address}:{port} (SLUICE_TEST_HOSTS)", file=sys.stderr)


if _spec := os.environ.get("SLUICE_TEST_HOSTS"):
    _install(parse_hosts(_spec))
