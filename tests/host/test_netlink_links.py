"""veth pairs and the address/route/neighbour helpers on the real kernel, in private netns."""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import socket

import pytest

from nkframe import netns
from nkframe.errors import InvalidSpec, KernelError, NetnsNotFound
from nkframe.netlink import links
from nkframe.netlink.links import VethSpec

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


@pytest.fixture
def two_netns():
    """A "node" and a "pod" namespace, both removed afterwards whatever happens."""
    names = [f"nkt-{secrets.token_hex(4)}" for _ in range(2)]
    made = []
    try:
        for n in names:
            netns.create(n)
            made.append(n)
        yield tuple(names)
    finally:
        for n in made:
            netns.delete(n)


def _udp_roundtrip(src_ns: str, dst_ns: str, dst_ip: str) -> bytes:
    family = socket.AF_INET6 if ":" in dst_ip else socket.AF_INET
    with netns.enter(dst_ns):
        rx = socket.socket(family, socket.SOCK_DGRAM)
    with netns.enter(src_ns):
        tx = socket.socket(family, socket.SOCK_DGRAM)
    try:
        rx.bind((dst_ip, 0))
        rx.settimeout(3)
        tx.sendto(b"nkframe", (dst_ip, rx.getsockname()[1]))
        return rx.recv(100)
    finally:
        rx.close()
        tx.close()


def test_veth_peer_created_in_its_netns_under_final_name(two_netns):
    node, pod = two_netns
    spec = VethSpec(
        name="ve-pod",
        peer_name="eth0",
        peer_netns=pod,
        mtu=1400,
        address="02:00:00:00:01:01",
        peer_address="02:00:00:00:01:02",
        num_tx_queues=2,
        num_rx_queues=3,
        peer_num_tx_queues=4,
        peer_num_rx_queues=5,
        gso_max_size=32768,
        peer_gro_max_size=32768,
    )
    pair = links.create_veth(spec, netns=node)
    assert (pair.name, pair.peer_name, pair.netns, pair.peer_netns) == ("ve-pod", "eth0", node, pod)

    host = links.get_link("ve-pod", node)
    peer = links.get_link("eth0", pod)
    assert host.ifindex == pair.ifindex and peer.ifindex == pair.peer_ifindex
    assert host.kind == peer.kind == "veth"
    assert (host.mtu, peer.mtu) == (1400, 1400)  # peer MTU sent explicitly
    assert (host.address, peer.address) == ("02:00:00:00:01:01", "02:00:00:00:01:02")
    assert (host.num_tx_queues, host.num_rx_queues) == (2, 3)
    assert (peer.num_tx_queues, peer.num_rx_queues) == (4, 5)
    assert host.gso_max_size == 32768 and peer.gro_max_size == 32768
    assert host.link_ifindex == peer.ifindex and peer.link_ifindex == host.ifindex
    assert host.link_netnsid is not None  # the peer lives elsewhere
    # Never in the node netns, not even briefly under another name.
    assert [ls.name for ls in links.list_links(node)] == ["lo", "ve-pod"]
    assert [ls.name for ls in links.list_links(pod)] == ["lo", "eth0"]


def test_veth_distinct_peer_mtu_and_same_netns(two_netns):
    node, _ = two_netns
    pair = links.create_veth(VethSpec("va", "vb", mtu=9000, peer_mtu=1500), netns=node)
    assert pair.peer_netns == node
    assert links.get_link("va", node).mtu == 9000
    assert links.get_link("vb", node).mtu == 1500


def test_veth_name_taken_gives_eexist_and_leaves_nothing(two_netns):
    node, pod = two_netns
    links.create_veth(VethSpec("ve0", "eth0", peer_netns=pod), netns=node)
    # Primary name free, peer name taken in the pod: the kernel refuses the whole pair.
    with pytest.raises(KernelError, match="already exists") as ei:
        links.create_veth(VethSpec("ve1", "eth0", peer_netns=pod), netns=node)
    assert ei.value.errno == errno.EEXIST
    assert not links.link_exists("ve1", node)
    with pytest.raises(KernelError) as ei:
        links.create_veth(VethSpec("ve0", "eth1", peer_netns=pod), netns=node)
    assert ei.value.errno == errno.EEXIST
    assert not links.link_exists("eth1", pod)


def test_delete_one_end_deletes_the_pair(two_netns):
    node, pod = two_netns
    links.create_veth(VethSpec("ve0", "eth0", peer_netns=pod), netns=node)
    assert links.delete_link("eth0", netns=pod) is True
    assert not links.link_exists("ve0", node)
    assert links.delete_link("ve0", netns=node) is False  # missing is fine
    with pytest.raises(KernelError) as ei:
        links.delete_link("ve0", netns=node, missing_ok=False)
    assert ei.value.errno == errno.ENODEV


def test_missing_netns_is_an_error_not_a_new_netns(two_netns):
    node, _ = two_netns
    ghost = f"nkt-{secrets.token_hex(4)}"
    with pytest.raises(NetnsNotFound):
        links.create_veth(VethSpec("ve0", "eth0", peer_netns=ghost), netns=node)
    with pytest.raises(NetnsNotFound):
        links.get_link("lo", ghost)
    assert links.delete_link("x", netns=ghost) is False
    assert not os.path.lexists(f"/run/netns/{ghost}")
    assert not links.link_exists("ve0", node)


def test_get_link_missing(two_netns):
    node, _ = two_netns
    with pytest.raises(KernelError, match="no interface 'nope'") as ei:
        links.get_link("nope", node)
    assert ei.value.errno == errno.ENODEV
    assert links.link_exists("lo", node)


def test_up_down_mtu_mac(two_netns):
    node, _ = two_netns
    links.create_veth(VethSpec("va", "vb"), netns=node)
    links.set_up("va", node)
    assert links.get_link("va", node).up
    links.set_down("va", node)
    assert not links.get_link("va", node).up
    links.set_mtu("va", 1280, node)
    assert links.get_link("va", node).mtu == 1280
    links.set_address("va", "02:00:00:00:00:aa", node)
    assert links.get_link("va", node).address == "02:00:00:00:00:aa"
    with pytest.raises(InvalidSpec):
        links.set_mtu("va", 20, node)


def test_addresses_routes_neighbours_and_traffic(two_netns):
    """The pod wiring the engine does: /32 on the pod side, host route, onlink default."""
    node, pod = two_netns
    links.create_veth(VethSpec("ve-pod", "eth0", peer_netns=pod), netns=node)
    for name, ns in (("ve-pod", node), ("eth0", pod), ("lo", pod), ("lo", node)):
        links.set_up(name, ns)

    links.add_address("eth0", "10.77.0.2/32", pod)
    links.add_address("eth0", "fd77::2/128", pod, nodad=True)
    links.add_address("ve-pod", "169.254.1.1/32", node)
    links.add_address("ve-pod", "fd77::1/128", node, nodad=True)
    links.add_address("ve-pod", "169.254.1.1/32", node, exist_ok=True)
    with pytest.raises(KernelError) as ei:
        links.add_address("ve-pod", "169.254.1.1/32", node)
    assert ei.value.errno == errno.EEXIST
    assert ipaddress.ip_interface("10.77.0.2/32") in links.list_addresses("eth0", pod)
    assert ipaddress.ip_interface("fd77::2/128") in links.list_addresses("eth0", pod)

    # Pod: the gateway is not on any pod subnet, hence onlink.
    links.add_route("default", via="169.254.1.1", dev="eth0", onlink=True, netns=pod)
    links.add_route("default6", via="fd77::1", dev="eth0", onlink=True, netns=pod)
    # Node: a /32 host route to the pod.
    links.add_host_route("10.77.0.2", "ve-pod", netns=node)
    links.add_host_route("fd77::2", "ve-pod", netns=node)
    links.add_host_route("10.77.0.2", "ve-pod", netns=node)  # replace: idempotent

    routes = links.list_routes(pod)
    assert {"dst": "default", "via": "169.254.1.1", "dev": "eth0", "onlink": True} .items() <= next(
        r for r in routes if r["dst"] == "default"
    ).items()
    node_routes = links.list_routes(node)
    assert any(r["dst"] == "10.77.0.2/32" and r["dev"] == "ve-pod" for r in node_routes)
    v6 = links.list_routes(node, family=socket.AF_INET6)
    assert any(r["dst"] == "fd77::2/128" and r["dev"] == "ve-pod" for r in v6)

    # Static neighbour entries: no ARP needed for the gateway.
    node_mac = links.get_link("ve-pod", node).address
    links.add_neighbour("eth0", "169.254.1.1", node_mac, pod)
    assert links.list_neighbours("eth0", pod)["169.254.1.1"] == node_mac

    assert _udp_roundtrip(node, pod, "10.77.0.2") == b"nkframe"
    assert _udp_roundtrip(pod, node, "169.254.1.1") == b"nkframe"
    assert _udp_roundtrip(node, pod, "fd77::2") == b"nkframe"

    links.del_route("default", via="169.254.1.1", dev="eth0", netns=pod)
    links.del_route("default", via="169.254.1.1", dev="eth0", netns=pod)  # missing is fine
    assert not any(r["dst"] == "default" for r in links.list_routes(pod))
    links.del_neighbour("eth0", "169.254.1.1", pod)
    links.del_neighbour("eth0", "169.254.1.1", pod)
    links.del_address("eth0", "10.77.0.2/32", pod)
    links.del_address("eth0", "10.77.0.2/32", pod)
    assert ipaddress.ip_interface("10.77.0.2/32") not in links.list_addresses("eth0", pod)


def test_route_argument_errors(two_netns):
    node, _ = two_netns
    with pytest.raises(InvalidSpec, match="onlink"):
        links.add_route("default", via="10.0.0.1", onlink=True, netns=node)
    with pytest.raises(InvalidSpec, match="IPv6"):
        links.add_route("default", via="fd00::1", dev="lo", netns=node)
    with pytest.raises(InvalidSpec):
        links.add_route("10.0.0.0/33", dev="lo", netns=node)
    with pytest.raises(KernelError) as ei:  # gateway unreachable without onlink
        links.create_veth(VethSpec("va", "vb"), netns=node)
        links.set_up("va", node)
        links.add_route("default", via="10.9.9.9", dev="va", netns=node)
    assert ei.value.errno == errno.ENETUNREACH


def test_sysctl_is_per_netns(two_netns):
    node, pod = two_netns
    host_value = links.sysctl("net.ipv4.ip_forward")
    assert links.sysctl("net.ipv4.ip_forward", 1, node) == "1"
    assert links.sysctl("net.ipv4.ip_forward", None, pod) == "0"
    assert links.sysctl("net.ipv4.ip_forward") == host_value
    with pytest.raises(InvalidSpec):
        links.sysctl("kernel.hostname", "x", node)


def test_ipv6_address_without_dad_is_usable_when_add_returns(two_netns):
    """The kernel installs an IPv6 address's local route from a workqueue after RTM_NEWADDR has
    been answered; add_address(nodad=True) returns only once the route is there, so a packet
    that arrives at once is delivered (without the wait, ~5 in 30 were dropped as "no route"
    here: a pod's first packets after its address was set)."""
    a, b = two_netns
    links.create_veth(VethSpec(name="v1", peer_name="v2", peer_netns=b), netns=a)
    for ns, dev in ((a, "v1"), (b, "v2"), (a, "lo"), (b, "lo")):
        links.set_up(dev, netns=ns)
    links.add_address("v1", "fd00:8::1/64", netns=a, nodad=True)
    links.add_address("v2", "fd00:8::2/64", netns=b, nodad=True)
    links.add_route("fd00:9::/64", via="fd00:8::2", netns=a)
    with netns.enter(b):
        rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with netns.enter(a):
        tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        rx.bind(("::", 0))
        rx.settimeout(0.5)
        port = rx.getsockname()[1]
        for i in range(30):
            addr = f"fd00:9::{i + 1}"
            links.add_address("lo", f"{addr}/128", netns=b, nodad=True)
            tx.sendto(f"{i}".encode(), (addr, port))
            assert rx.recv(100) == f"{i}".encode(), f"packet to {addr} right after adding it"
    finally:
        rx.close()
        tx.close()


def test_batch_shares_one_socket_per_namespace_and_closes_them(two_netns):
    a, b = two_netns

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    with links.batch():
        for _ in range(5):
            links.get_link("lo", netns=a)
            links.get_link("lo", netns=b)
            links.set_up("lo", netns=a)
        assert fds() == before + 2, "one socket per namespace, reused by every call"
        with links.batch():  # nested: the outer block's sockets
            links.get_link("lo", netns=a)
            assert fds() == before + 2
    assert fds() == before, "the batch closed its sockets"
    assert links.get_link("lo", netns=a).up


def test_sysctls_write_several_in_one_namespace(two_netns):
    a, b = two_netns
    got = links.sysctls({"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1}, netns=a)
    assert got == {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}
    assert links.sysctl("net.ipv4.ip_forward", netns=b) == "0", "only the namespace asked for"
    with pytest.raises(InvalidSpec, match="only keys under net"):
        links.sysctls({"kernel.panic": 1}, netns=a)
    with pytest.raises(InvalidSpec, match="does not exist"):
        links.sysctls({"net.ipv4.no_such_knob": 1}, netns=a)
