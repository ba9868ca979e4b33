"""The L2 datapath's own behaviour against the real kernel: MACs on both ends, the gateway's
ARP and neighbour solicitations answered by BPF (and nothing else answered), L2 headers
rewritten on redirect.  (Traffic in every direction: test_l3_matrix.py.)"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time

import pytest

import nkframe_l2
import nkframe_l3
from nkframe import netns
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import EndpointSpec

pytestmark = pytest.mark.root

A4, A6 = "10.230.0.10", "fd00:230::10"
B4, B6 = "10.230.0.11", "fd00:230::11"
ETH_P_ALL = 0x0003


def _engine(node, root):
    return Engine(node.netns, root, plugin_objects=[nkframe_l3, nkframe_l2], autoload=False, uplink=node.uplink)


def _spec(pod, id="pod-a", v4=A4, v6=A6, mode="l2", **kw):
    return EndpointSpec(id=id, netns=pod, mode=mode, addresses=[f"{v4}/32", f"{v6}/128"], **kw)


def _stat(root, eid, name):
    return nkframe_l3.endpoint_stats(root, eid)[name][0]


def _mac(ns, dev):
    return links.get_link(dev, netns=ns).address


def test_macs_set_on_both_ends(node, bpffs_root):
    eng = _engine(node, bpffs_root)
    derived = eng.add_endpoint(_spec(node.pod()))
    assert _mac(derived.spec.netns, "eth0") == nkframe_l3.derived_mac("pod-a", "pod")
    assert _mac(node.netns, derived.spec.node_ifname) == nkframe_l3.derived_mac("pod-a", "node")
    given = eng.add_endpoint(_spec(node.pod(), id="pod-b", v4=B4, v6=B6, mac="02:00:5e:00:00:0b", host_mac="02:00:5e:00:00:0c"))
    assert _mac(given.spec.netns, "eth0") == "02:00:5e:00:00:0b"
    assert _mac(node.netns, given.spec.node_ifname) == "02:00:5e:00:00:0c"
    entries = nkframe_l3.endpoint_entries(bpffs_root)
    b = entries[ipaddress.ip_address(B4)]
    assert (b.pod_mac, b.node_mac) == ("02:00:5e:00:00:0b", "02:00:5e:00:00:0c")
    # the node reaches the pod without asking: permanent neighbour entries with the pod's MAC
    assert links.list_neighbours(given.spec.node_ifname, netns=node.netns).get(B4) == "02:00:5e:00:00:0b"
    for eid in ("pod-a", "pod-b"):
        eng.remove_endpoint(eid)


def _wait_neigh(ns, dev, ip, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mac = links.list_neighbours(dev, netns=ns).get(ip)
        if mac:
            return mac
        time.sleep(0.05)
    return None


def test_gateway_arp_and_nd_answered_by_bpf(node, bpffs_root):
    eng = _engine(node, bpffs_root)
    pod = node.pod()
    ep = eng.add_endpoint(_spec(pod))
    node_mac = _mac(node.netns, ep.spec.node_ifname)
    links.add_address("lo", "10.231.0.1/32", netns=node.netns)
    links.add_address("lo", "fd00:231::1/128", netns=node.netns, nodad=True)
    # The pod has no neighbour entries for its gateways: it must ask, and the program answers.
    neigh = links.list_neighbours("eth0", netns=pod)
    assert "169.254.1.1" not in neigh and "fe80::1" not in neigh
    assert udp_probe(pod, node.netns, "10.231.0.1", count=2) == 2
    assert udp_probe(pod, node.netns, "fd00:231::1", count=2) == 2
    assert _wait_neigh(pod, "eth0", "169.254.1.1") == node_mac
    assert _wait_neigh(pod, "eth0", "fe80::1") == node_mac
    assert _stat(bpffs_root, "pod-a", "arp_reply") >= 1
    assert _stat(bpffs_root, "pod-a", "nd_reply") >= 1
    # Forget them and ask again: answered again (unicast probes are answered as well).
    links.del_neighbour("eth0", "169.254.1.1", netns=pod)
    links.del_neighbour("eth0", "fe80::1", netns=pod)
    arp, nd = _stat(bpffs_root, "pod-a", "arp_reply"), _stat(bpffs_root, "pod-a", "nd_reply")
    assert udp_probe(pod, node.netns, "10.231.0.1", count=1) == 1
    assert udp_probe(pod, node.netns, "fd00:231::1", count=1) == 1
    assert _stat(bpffs_root, "pod-a", "arp_reply") > arp
    assert _stat(bpffs_root, "pod-a", "nd_reply") > nd
    eng.remove_endpoint("pod-a")


def test_only_the_gateway_is_answered(node, bpffs_root):
    eng = _engine(node, bpffs_root)
    pod = node.pod()
    eng.add_endpoint(_spec(pod))
    # An on-link route makes the pod ARP for an address nobody has.
    links.add_route("10.232.0.9/32", dev="eth0", netns=pod)
    with netns.enter(pod):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.sendto(b"x", ("10.232.0.9", 9))
    time.sleep(1.2)  # the first ARP request goes out at once; retries every second
    assert _stat(bpffs_root, "pod-a", "arp_reply") == 0
    assert _stat(bpffs_root, "pod-a", "non_ip") >= 1, "the request was seen and handed on"
    assert links.list_neighbours("eth0", netns=pod).get("10.232.0.9") is None
    eng.remove_endpoint("pod-a")


@pytest.mark.parametrize("mode", ["l2", "l3"])
@pytest.mark.parametrize("gw6", ["fe80::beef", "fd00:ffff::1"], ids=["link-local", "global"])
def test_custom_gateways(node, bpffs_root, mode, gw6):
    """Other gateway addresses, in both datapaths; a global IPv6 gateway is routed on-link."""
    eng = _engine(node, bpffs_root)
    pod = node.pod()
    links.add_address("lo", "10.231.0.1/32", netns=node.netns)
    links.add_address("lo", "fd00:231::1/128", netns=node.netns, nodad=True)
    ep = eng.add_endpoint(_spec(pod, mode=mode, options={"datapath": {"gateway4": "10.255.255.1", "gateway6": gw6}}))
    assert udp_probe(pod, node.netns, "10.231.0.1", count=2) == 2
    assert udp_probe(pod, node.netns, "fd00:231::1", count=2) == 2
    if ep.device_kind.value == "veth" or mode == "l2":
        neigh = links.list_neighbours("eth0", netns=pod)
        assert "10.255.255.1" in neigh and gw6 in neigh
    assert {r["dst"]: r["via"] for r in links.list_routes(netns=pod)}["default"] == "10.255.255.1"
    assert {r["dst"]: r["via"] for r in links.list_routes(netns=pod, family=socket.AF_INET6)}["default"] == gw6
    eng.remove_endpoint("pod-a")


def _capture(ns, dev="eth0"):
    with netns.enter(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((dev, 0))
    return s


def _frame_with(s, marker: bytes, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        frame, addr = s.recvfrom(65535)
        if addr[2] != socket.PACKET_OUTGOING and marker in frame:
            return frame
    return None


@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
def test_l2_headers_rewritten_on_redirect(node, bpffs_root, family):
    """A redirected frame arrives addressed to the receiving pod, from its node-side MAC."""
    eng = _engine(node, bpffs_root)
    pa, pb = node.pod(), node.pod()
    eng.add_endpoint(_spec(pa))
    eb = eng.add_endpoint(_spec(pb, id="pod-b", v4=B4, v6=B6))
    cap = _capture(pb)
    try:
        fam = socket.AF_INET if family == 4 else socket.AF_INET6
        with netns.enter(pa):
            tx = socket.socket(fam, socket.SOCK_DGRAM)
        marker = b"nkframe-l2-%d" % family
        with tx:
            tx.sendto(marker, (B4 if family == 4 else B6, 9))
        frame = _frame_with(cap, marker)
    finally:
        cap.close()
    assert frame is not None, "the frame reached pod b"
    dst, src, ethertype = frame[0:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    mac = lambda raw: ":".join(f"{b:02x}" for b in raw)  # noqa: E731
    assert mac(dst) == _mac(pb, "eth0")
    assert mac(src) == _mac(node.netns, eb.spec.node_ifname)
    assert ethertype == (0x0800 if family == 4 else 0x86DD)
    assert _stat(bpffs_root, "pod-a", "local") >= 1
    for eid in ("pod-a", "pod-b"):
        eng.remove_endpoint(eid)


def _ns_packet(target: str, options: bytes) -> bytes:
    # ICMPv6 neighbour solicitation: type 135, code 0, checksum (the kernel fills it in for raw
    # ICMPv6 sockets), reserved, target, options
    return struct.pack("!BBHI", 135, 0, 0, 0) + socket.inet_pton(socket.AF_INET6, target) + options


@pytest.mark.parametrize(
    "options",
    [b"", b"\x0e\x01" + bytes(6), b"\x01\x01\x02\x00\x00\x00\x00\x01" + b"\x0e\x01" + bytes(6)],
    # no options (the frame grows), a nonce instead of the link-layer address (same size),
    # link-layer address and nonce (the frame shrinks)
    ids=["grow", "same-size", "shrink"],
)
def test_solicitations_of_any_shape_get_a_well_formed_advertisement(node, bpffs_root, options):
    """The program rebuilds the advertisement whole, so solicitations with fewer or other options
    than the usual source link-layer address still get a 32-byte NA with a correct checksum (the
    pod's kernel drops ICMPv6 with a bad one before any socket sees it)."""
    eng = _engine(node, bpffs_root)
    pod = node.pod()
    ep = eng.add_endpoint(_spec(pod))
    node_mac = _mac(node.netns, ep.spec.node_ifname)
    ifindex = links.get_link("eth0", netns=pod).ifindex
    with netns.enter(pod):
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        s.bind((A6, 0))
        before = _stat(bpffs_root, "pod-a", "nd_reply")
        s.sendto(_ns_packet("fe80::1", options), ("ff02::1:ff00:1", 0, 0, ifindex))
        deadline = time.monotonic() + 2
        na = None
        while na is None and time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], 0.2)
            if r:
                data, addr = s.recvfrom(2048)
                if data[0] == 136:
                    na, src = data, addr[0]
    finally:
        s.close()
    assert na is not None, "a neighbour advertisement reached the pod"
    assert src == "fe80::1"
    assert len(na) == 32
    assert na[4] & 0xE0 == 0xE0, "router, solicited, override"
    assert socket.inet_ntop(socket.AF_INET6, na[8:24]) == "fe80::1"
    assert na[24:26] == b"\x02\x01", "target link-layer address option"
    assert ":".join(f"{b:02x}" for b in na[26:32]) == node_mac
    assert _stat(bpffs_root, "pod-a", "nd_reply") == before + 1
    eng.remove_endpoint("pod-a")
