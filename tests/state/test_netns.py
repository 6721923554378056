from __future__ import annotations

import ipaddress

from state.netns import SUBNETS, Network, NetworkError, allocate


def test_a_network_takes_a_free_30_and_names_that_fit_the_kernels_limits() -> None:
    network = allocate(in_use=[])
    host, inside = ipaddress.ip_address(network.host_address), ipaddress.ip_address(network.sandbox_address)
    assert host in SUBNETS and int(inside) == int(host) + 1 and int(host) % 4 == 1
    assert len(network.host_link) <= 15 and len(network.sandbox_link) <= 15  # IFNAMSIZ - 1
    assert network.namespace == f"sluice-{network.tag}" and network.table == f"sluice_{network.tag}"


def test_addresses_in_use_are_never_taken() -> None:
    taken = [str(address) for address in ipaddress.IPv4Network("10.201.0.0/17")]
    for _ in range(5):
        network = allocate(in_use=taken)
        assert ipaddress.ip_address(network.host_address) in ipaddress.IPv4Network("10.201.128.0/17")


def test_tear_down_undoes_every_step_last_first_even_past_a_failure() -> None:
    network = Network("abc123", "10.201.0.1", "10.201.0.2")
    done: list[str] = []

    def fail() -> None:
        raise NetworkError("ip link del slcabc123h: Cannot find device")

    network._undo += [
        ("first", lambda: done.append("first")),
        ("second", fail),
        ("third", lambda: done.append("third")),
    ]
    assert network.tear_down() == ["second: ip link del slcabc123h: Cannot find device"]
    assert done == ["third", "first"]
    assert network.tear_down() == []  # nothing is undone twice
