"""The sandbox's network: a network namespace whose only way out is a sluice on the host side of a veth pair.

Built with `ip` and `nft` (iproute2 and nftables), as root. The host side of the pair holds one address of a
/30 of its own (10.201.0.0/16); in the namespace, the other address and a default route through it, and no
IPv6. One nftables table of the sandbox's own, on the host, does the rest, for packets that come in on the
pair: every TCP connection is redirected (REDIRECT, which keeps the original destination for mitmproxy's
transparent mode) to sluice's port and every DNS query to sluice's DNS port; nothing else from the
namespace is accepted or forwarded, and nothing is forwarded into it.

Everything made is undone in reverse order by `Network.tear_down`, each step on its own, so one failing
step does not leave the others behind; `ip netns exec` takes the namespace's resolv.conf from
/etc/netns/NAME/, which goes too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

SUBNETS = ipaddress.IPv4Network("10.201.0.0/16")
NETNS_ETC = Path("/etc/netns")
# One file per sandbox, named by its tag, holding the pid of the `sluice sandbox` that made it: what a
# sandbox killed too hard to tear itself down (SIGKILL) left behind is found here (`clean_stale`).
OWNERS = Path("/run/sluice-sandbox")
PREFIX = "sluice-"


class NetworkError(RuntimeError):
    """A step of building the sandbox's network failed; the message names the command and its error."""


def missing_tools() -> list[str]:
    """The programs the sandbox needs that are not on PATH (iproute2's `ip`, nftables' `nft`)."""
    return [tool for tool in ("ip", "nft") if shutil.which(tool) is None]


def run(*command: str, stdin: str | None = None) -> str:
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetworkError(f"{' '.join(command)}: {done.stderr.strip() or f'exit status {done.returncode}'}")
    return done.stdout


@dataclass
class Network:
    """One sandbox's namespace, veth pair, addresses and nftables table; `tear_down` undoes them all."""

    tag: str
    host_address: str
    sandbox_address: str
    _undo: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return PREFIX + self.tag

    @property
    def host_link(self) -> str:
        return f"slc{self.tag}h"  # interface names are at most 15 characters

    @property
    def sandbox_link(self) -> str:
        return f"slc{self.tag}n"

    @property
    def table(self) -> str:
        return f"sluice_{self.tag}"

    def build(self) -> None:
        """Make the namespace and its link to the host (no redirection yet: see `redirect`)."""
        ns, host, inside = self.namespace, self.host_link, self.sandbox_link
        OWNERS.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = OWNERS / self.tag
        owner.write_text(f"{os.getpid()}\n")
        self._undo.append((f"rm {owner}", owner.unlink))
        run("ip", "netns", "add", ns)
        self._undo.append((f"ip netns del {ns}", lambda: run("ip", "netns", "del", ns)))
        run("ip", "link", "add", host, "type", "veth", "peer", "name", inside, "netns", ns)
        self._undo.append((f"ip link del {host}", lambda: self._delete_link(host)))
        run("sysctl", "-qw", f"net.ipv6.conf.{host}.disable_ipv6=1")
        run("ip", "addr", "add", f"{self.host_address}/30", "dev", host)
        run("ip", "link", "set", host, "up")
        run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "addr", "add", f"{self.sandbox_address}/30", "dev", inside)
        run("ip", "-n", ns, "link", "set", inside, "up")
        run("ip", "-n", ns, "route", "add", "default", "via", self.host_address)
        etc = NETNS_ETC / ns
        etc.mkdir(parents=True, exist_ok=True)
        self._undo.append((f"rm -r {etc}", lambda: shutil.rmtree(etc)))
        (etc / "resolv.conf").write_text(f"nameserver {self.host_address}\n")

    def redirect(self, proxy_port: int, dns_port: int) -> None:
        """Send the namespace's TCP to `proxy_port` and its DNS to `dns_port`; drop everything else."""
        host = self.host_link
        ruleset = f"""
table inet {self.table} {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{host}" meta nfproto ipv4 meta l4proto tcp redirect to :{proxy_port}
        iifname "{host}" meta nfproto ipv4 udp dport 53 redirect to :{dns_port}
    }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname "{host}" meta nfproto ipv4 tcp dport {proxy_port} accept
        iifname "{host}" meta nfproto ipv4 udp dport {dns_port} accept
        iifname "{host}" drop
    }}
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname "{host}" drop
        oifname "{host}" drop
    }}
}}
"""
        run("nft", "-f", "-", stdin=ruleset)
        drop = ("nft", "delete", "table", "inet", self.table)
        self._undo.append((" ".join(drop), lambda: run(*drop)))

    def pids(self) -> list[int]:
        """Processes in the namespace (the command and anything it left running)."""
        output = run("ip", "netns", "pids", self.namespace)
        return [int(pid) for pid in output.split()]

    def tear_down(self) -> list[str]:
        """Undo everything, last made first; returns what could not be undone (empty when all went)."""
        failures = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except (NetworkError, OSError) as e:
                failures.append(f"{what}: {e}")
        return failures

    @staticmethod
    def _delete_link(name: str) -> None:
        # Deleting the namespace first takes the pair with it: then there is nothing left to delete.
        if Path("/sys/class/net", name).exists():
            run("ip", "link", "del", name)


def clean_stale() -> list[str]:
    """Tear down what sandboxes whose `sluice sandbox` process is gone left behind (it was killed with
    SIGKILL, or the machine's power went): their processes, nftables tables, links, namespaces. Returns
    the namespaces cleaned; a sandbox whose process still runs is left alone."""
    cleaned = []
    for owner in sorted(OWNERS.glob("*")) if OWNERS.is_dir() else []:
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if _process_exists(pid):
            continue
        network = Network(owner.name, "", "")
        with contextlib.suppress(NetworkError):
            for leftover in network.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leftover, signal.SIGKILL)
        steps: list[tuple[str, Callable[[], object]]] = [
            ("", owner.unlink),
            ("", partial(run, "ip", "netns", "del", network.namespace)),
            ("", partial(Network._delete_link, network.host_link)),
            ("", partial(shutil.rmtree, NETNS_ETC / network.namespace, ignore_errors=True)),
            ("", partial(run, "nft", "delete", "table", "inet", network.table)),
        ]
        network._undo = steps
        network.tear_down()  # a step whose object is already gone fails; the others still run
        cleaned.append(network.namespace)
    return cleaned


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def allocate(in_use: Sequence[str] | None = None) -> Network:
    """A Network with a fresh tag and a /30 no interface on the host uses."""
    taken = set(in_use if in_use is not None else _addresses_in_use())
    blocks = list(SUBNETS.subnets(new_prefix=30))
    for _attempt in range(64):
        block = blocks[secrets.randbelow(len(blocks))]
        host, inside = (str(address) for address in block.hosts())
        if host not in taken and inside not in taken:
            return Network(secrets.token_hex(3), host, inside)
    raise NetworkError(f"no free /30 in {SUBNETS} after 64 tries")


def _addresses_in_use() -> list[str]:
    output = run("ip", "-o", "-4", "addr", "show")
    return [part.split("/")[0] for line in output.splitlines() for part in line.split() if "/" in part]


def is_root() -> bool:
    return os.geteuid() == 0
