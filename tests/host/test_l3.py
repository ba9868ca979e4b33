"""The L3 datapath plugin's own behaviour against the real kernel: what it configures, what it
removes, rollback, conflicts, composition with other programs, TTL handling, mixed L3/L2 nodes.

(The traffic matrix for both datapaths is in test_l3_matrix.py.)
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time

import pytest

import nkframe_l2
import nkframe_l3
from nkframe import hookimpl, netns, objects
from nkframe.engine import Engine
from nkframe.errors import EndpointExists, PluginError
from nkframe.netlink import links
from nkframe.testing import tcp_connect, udp_probe
from nkframe.types import DeviceKind, EndpointSpec, Hook, ProgramSpec
from nkframe_fwd import layout

pytestmark = pytest.mark.root

A4, A6 = "10.220.0.10", "fd00:220::10"
IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)  # linux/in.h; Python lacks the name
B4, B6 = "10.220.0.11", "fd00:220::11"


def _wait_dad(*namespaces: str, timeout: float = 5.0) -> None:
    """Wait until no IPv6 address in the namespaces is tentative (DAD finished)."""
    deadline = time.monotonic() + timeout
    for ns in namespaces:
        while True:
            with netns.enter(ns):
                with open("/proc/thread-self/net/if_inet6") as f:
                    tentative = [l.split()[-1] for l in f if int(l.split()[4], 16) & 0x40]
            if not tentative:
                break
            assert time.monotonic() < deadline, f"IPv6 addresses still tentative in {ns} on {tentative}"
            time.sleep(0.05)


@pytest.fixture
def outside_routes(node):
    links.add_route("10.220.0.0/16", via="192.0.2.1", netns=node.outside)
    links.add_route("fd00:220::/64", via="2001:db8:ff::1", netns=node.outside)
    _wait_dad(node.netns, node.outside)
    return node


def _engine(node, root, *extra, **kw):
    return Engine(node.netns, root, plugin_objects=[nkframe_l3, nkframe_l2, *extra], autoload=False, uplink=node.uplink, **kw)


def _spec(pod, id="pod-a", v4=A4, v6=A6, **kw):
    return EndpointSpec(id=id, netns=pod, addresses=[f"{v4}/32", f"{v6}/128"], **kw)


def _routes(ns, family=socket.AF_INET):
    return {r["dst"]: r for r in links.list_routes(netns=ns, family=family)}


def test_configuration_and_removal(node, bpffs_root):
    eng = _engine(node, bpffs_root)
    pod = node.pod()
    ep = eng.add_endpoint(_spec(pod))
    dev = ep.spec.node_ifname

    # the map knows both addresses, owned by this endpoint, delivered to its node-side device
    entries = nkframe_l3.endpoint_entries(bpffs_root)
    assert set(entries) == {ipaddress.ip_address(A4), ipaddress.ip_address(A6)}
    for e in entries.values():
        assert e.ifindex == ep.node_ifindex
        assert e.owner == layout.owner_tag("pod-a")
        assert e.flags == 0  # no TO_POD programs, L3
    node_mac = links.get_link(dev, netns=node.netns).address
    pod_mac = links.get_link("eth0", netns=pod).address
    if ep.device_kind is DeviceKind.NETKIT:
        assert entries[ipaddress.ip_address(A4)].pod_mac == layout.ZERO_MAC
    else:
        assert (entries[ipaddress.ip_address(A4)].pod_mac, entries[ipaddress.ip_address(A4)].node_mac) == (pod_mac, node_mac)

    # pod: host addresses, default routes via the gateways
    assert {str(a) for a in links.list_addresses("eth0", netns=pod) if not a.ip.is_link_local} == {f"{A4}/32", f"{A6}/128"}
    r4 = _routes(pod)["default"]
    assert (r4["via"], r4["dev"], r4["onlink"]) == ("169.254.1.1", "eth0", True)
    r6 = _routes(pod, socket.AF_INET6)["default"]
    assert (r6["via"], r6["dev"]) == ("fe80::1", "eth0")
    neigh = links.list_neighbours("eth0", netns=pod)
    if ep.device_kind is DeviceKind.VETH:
        assert neigh.get("169.254.1.1") == node_mac and neigh.get("fe80::1") == node_mac
    # node: host routes to the pod through its device, forwarding on
    assert _routes(node.netns)[f"{A4}/32"]["dev"] == dev
    assert _routes(node.netns, socket.AF_INET6)[f"{A6}/128"]["dev"] == dev
    assert links.sysctl("net.ipv4.ip_forward", netns=node.netns) == "1"
    assert links.sysctl("net.ipv6.conf.all.forwarding", netns=node.netns) == "1"

    eng.remove_endpoint("pod-a")
    assert nkframe_l3.endpoint_entries(bpffs_root) == {}
    assert f"{A4}/32" not in _routes(node.netns)
    assert f"{A6}/128" not in _routes(node.netns, socket.AF_INET6)


def test_the_machines_own_forwarding_is_untouched(node, bpffs_root):
    mine = (links.sysctl("net.ipv4.ip_forward"), links.sysctl("net.ipv6.conf.all.forwarding"))
    eng = _engine(node, bpffs_root)
    eng.add_endpoint(_spec(node.pod()))
    assert (links.sysctl("net.ipv4.ip_forward"), links.sysctl("net.ipv6.conf.all.forwarding")) == mine
    eng.remove_endpoint("pod-a")


def test_failed_add_rolls_back_map_entries_and_routes(node, bpffs_root):
    class Boom:
        @hookimpl(trylast=True)
        def nkframe_endpoint_configure(self, ctx):
            assert nkframe_l3.endpoint_entries(bpffs_root), "the datapath configured first"
            raise RuntimeError("injected failure after the datapath configured")

    eng = _engine(node, bpffs_root, Boom())
    with pytest.raises(PluginError, match="injected failure") as err:
        eng.add_endpoint(_spec(node.pod()))
    assert isinstance(err.value.__cause__, RuntimeError)
    assert nkframe_l3.endpoint_entries(bpffs_root) == {}
    assert f"{A4}/32" not in _routes(node.netns)
    assert f"{A6}/128" not in _routes(node.netns, socket.AF_INET6)


def test_an_address_belongs_to_one_endpoint(node, bpffs_root):
    eng = _engine(node, bpffs_root)
    first = eng.add_endpoint(_spec(node.pod()))
    pod2 = node.pod()
    with pytest.raises(EndpointExists, match=f"address {A4} already belongs"):
        eng.add_endpoint(_spec(pod2, id="pod-dup", v6="fd00:220::99"))
    # the first endpoint's entries are intact and nothing of the second is left
    entries = nkframe_l3.endpoint_entries(bpffs_root)
    assert {e.ifindex for e in entries.values()} == {first.node_ifindex}
    assert set(entries) == {ipaddress.ip_address(A4), ipaddress.ip_address(A6)}
    assert not os.path.exists(f"{bpffs_root}/endpoints/pod-dup")
    assert _routes(node.netns)[f"{A4}/32"]["dev"] == first.spec.node_ifname
    eng.remove_endpoint("pod-a")


def test_unconfigure_tolerates_a_vanished_pod(node, bpffs_root, make_netns):
    eng = _engine(node, bpffs_root)
    pod = make_netns("gone")
    eng.add_endpoint(_spec(pod))
    netns.delete(pod)  # the pair dies with the namespace, the node's routes with the device
    rep = eng.reconcile()
    assert rep.removed == ("pod-a",)
    assert nkframe_l3.endpoint_entries(bpffs_root) == {}


class Extra:
    """Programs from another plugin on the same endpoint: count.o at a chosen order/hook."""

    def __init__(self, hook: Hook, order: int, verdict: int = -1):
        self.hook, self.order, self.verdict = hook, order, verdict

    @hookimpl
    def nkframe_programs_collect(self, ctx):
        return [
            ProgramSpec(
                name="extra", object=objects.path("count"), program="count", hook=self.hook, order=self.order,
                globals={"SLOT": struct.pack("<I", 0), "VERDICT": struct.pack("<i", self.verdict)},
                maps={"counts": "endpoint"}, plugin="extra",
            )
        ]


def _count(root, eid) -> int:
    from nkframe import bpf

    with bpf.Map.from_pin(f"{root}/endpoints/{eid}/maps/counts") as m:
        return sum(struct.unpack("<Q", v)[0] for v in m.lookup_percpu(struct.pack("<I", 0)))


def test_policy_order_runs_first_and_can_drop(outside_routes, bpffs_root):
    """A program at order 100 (where policy sits) runs before forwarding: if it continues, the
    packet is forwarded; if it drops, the forwarding program never sees the packet."""
    node = outside_routes
    eng = _engine(node, bpffs_root, Extra(Hook.FROM_POD, 100))
    eng.setup_uplink()
    ep = eng.add_endpoint(_spec(node.pod()))
    assert [p.name for p in ep.programs] == ["extra", "l3_fwd"]
    pod = ep.spec.netns
    assert udp_probe(pod, node.outside, "192.0.2.2", count=3) == 3
    assert _count(bpffs_root, "pod-a") >= 3
    assert nkframe_l3.endpoint_stats(bpffs_root, "pod-a")["neigh"][0] >= 3
    eng.remove_endpoint("pod-a")

    dropper = _engine(node, bpffs_root, Extra(Hook.FROM_POD, 100, verdict=2))
    ep = dropper.add_endpoint(_spec(pod))
    assert udp_probe(pod, node.outside, "192.0.2.2", count=2, timeout=0.3) == 0
    assert _count(bpffs_root, "pod-a") >= 2
    assert nkframe_l3.endpoint_stats(bpffs_root, "pod-a")["seen"][0] == 0
    dropper.remove_endpoint("pod-a")
    eng.teardown_uplink()


def test_uplink_never_bypasses_to_pod_programs(outside_routes, bpffs_root):
    """With TO_POD programs (ingress policy) attached, the uplink delivers through the node-side
    device so they run; without, it uses redirect_peer."""
    node = outside_routes
    eng = _engine(node, bpffs_root, Extra(Hook.TO_POD, 100))
    eng.setup_uplink()
    pod = node.pod()
    eng.add_endpoint(_spec(pod))
    assert {e.flags for e in nkframe_l3.endpoint_entries(bpffs_root).values()} == {layout.F_TO_POD_CHAIN}
    for dst in (A4, A6):
        assert udp_probe(node.outside, pod, dst, count=3) == 3
    up = nkframe_l3.uplink_stats(bpffs_root, node.uplink)
    assert up["uplink_via_dev"][0] >= 6 and up["peer"][0] == 0
    assert _count(bpffs_root, "pod-a") >= 6, "the TO_POD program saw the packets"
    eng.remove_endpoint("pod-a")

    plain = _engine(node, bpffs_root)
    plain.add_endpoint(_spec(pod))
    assert {e.flags for e in nkframe_l3.endpoint_entries(bpffs_root).values()} == {0}
    assert udp_probe(node.outside, pod, A4, count=3) == 3
    assert nkframe_l3.uplink_stats(bpffs_root, node.uplink)["peer"][0] >= 3
    plain.remove_endpoint("pod-a")
    eng.teardown_uplink()


def _recv_hops(ns, family, port):
    """A UDP socket in ``ns`` that reports the TTL / hop limit of what it receives."""
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    with netns.enter(ns):
        s = socket.socket(fam, socket.SOCK_DGRAM)
    if family == 4:
        s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    s.bind(("" if family == 4 else "::", port))
    return s


def _send(ns, family, dst, port, ttl):
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    with netns.enter(ns):
        s = socket.socket(fam, socket.SOCK_DGRAM)
    with s:
        if family == 4:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
        s.sendto(b"hops", (dst, port))


def _hops_after_send(sock, ns, family, dst, port, tries=3):
    """Send with hop limit 64 and return what ``sock`` saw. Resends: the very first packet of a
    run may wait for neighbour resolution (whose retransmit timer is 1 s) on a loaded machine;
    the hop count of whatever arrives is what the test judges."""
    for _ in range(tries):
        _send(ns, family, dst, port, 64)
        hops = _hops_of_next(sock)
        if hops is not None:
            return hops
    return None


def _hops_of_next(s, timeout=1.0):
    r, _, _ = select.select([s], [], [], timeout)
    if not r:
        return None
    _data, anc, _flags, _addr = s.recvmsg(64, socket.CMSG_SPACE(4))
    for level, kind, value in anc:
        if kind in (socket.IP_TTL, socket.IPV6_HOPLIMIT):
            return struct.unpack("i", value[:4])[0] if len(value) >= 4 else value[0]
    raise AssertionError("no TTL in the ancillary data")


@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
def test_ttl_is_decremented_and_expiry_left_to_the_stack(outside_routes, bpffs_root, family):
    """A router decrements the TTL (the IPv4 checksum must stay right, or the receiver drops the
    packet); a packet that would expire goes to the stack, which sends time-exceeded."""
    node = outside_routes
    eng = _engine(node, bpffs_root)
    eng.setup_uplink()
    pod_b = node.pod()
    pod = node.pod()
    eng.add_endpoint(_spec(pod))
    eng.add_endpoint(_spec(pod_b, id="pod-b", v4=B4, v6=B6))
    _wait_dad(pod, pod_b)
    out, b = (_recv_hops(node.outside, family, 7100), _recv_hops(pod_b, family, 7100))
    try:
        outside = "192.0.2.2" if family == 4 else "2001:db8:ff::2"
        assert _hops_after_send(out, pod, family, outside, 7100) == 63, "pod -> outside: one router hop"
        assert _hops_after_send(b, pod, family, B4 if family == 4 else B6, 7100) == 63, \
            "pod -> pod: one router hop"
        _send(node.outside, family, A4 if family == 4 else A6, 7101, 1)  # via the uplink, expires
        _send(pod, family, "192.0.2.2" if family == 4 else "2001:db8:ff::2", 7100, 1)
        # Only late copies of the resent hop-64 datagrams (63 on arrival) may still come in;
        # the hop-limit-1 one must not arrive at all.
        late = []
        while (h := _hops_of_next(out, 0.3)) is not None:
            late.append(h)
        assert set(late) <= {63}, late
        assert nkframe_l3.endpoint_stats(bpffs_root, "pod-a")["ttl"][0] >= 1
        assert nkframe_l3.uplink_stats(bpffs_root, node.uplink)["ttl"][0] >= 1
    finally:
        out.close()
        b.close()
    eng.remove_endpoint("pod-a")
    eng.remove_endpoint("pod-b")
    eng.teardown_uplink()


def test_l3_and_l2_pods_on_one_node(outside_routes, bpffs_root):
    """Both plugins loaded: each acts on its own mode; the shared address map lets an L3 pod and
    an L2 pod reach each other directly, with the right MACs for the receiving side."""
    node = outside_routes
    eng = _engine(node, bpffs_root)
    up = eng.setup_uplink()
    assert [p.name for p in up] == ["dp_uplink"]
    p3, p2 = node.pod(), node.pod()
    e3 = eng.add_endpoint(_spec(p3, id="pod-l3"))
    e2 = eng.add_endpoint(_spec(p2, id="pod-l2", v4=B4, v6=B6, mode="l2"))
    assert [p.name for p in e3.programs] == ["l3_fwd"]
    assert [p.name for p in e2.programs] == ["l2_fwd"]
    _wait_dad(p3, p2)
    flags = {str(ip): e.flags for ip, e in nkframe_l3.endpoint_entries(bpffs_root).items()}
    assert flags == {A4: 0, A6: 0, B4: layout.F_L2, B6: layout.F_L2}
    for src, dst_ns, dst in ((p3, p2, B4), (p3, p2, B6), (p2, p3, A4), (p2, p3, A6)):
        assert udp_probe(src, dst_ns, dst, count=2) == 2, f"{src} -> {dst}"
        assert tcp_connect(src, dst_ns, dst, 7200)
    assert nkframe_l3.endpoint_stats(bpffs_root, "pod-l3")["local"][0] >= 4
    assert nkframe_l3.endpoint_stats(bpffs_root, "pod-l2")["local"][0] >= 4
    for eid in ("pod-l3", "pod-l2"):
        eng.remove_endpoint(eid)
    eng.teardown_uplink()
    assert nkframe_l3.endpoint_entries(bpffs_root) == {}


def _bulk(src_ns, dst_ns, dst, port, size=4 << 20, timeout=20.0) -> bool:
    """Push ``size`` bytes over TCP and check they arrive intact (GSO/GRO-sized skbs on the way)."""
    import hashlib
    import threading

    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with netns.enter(dst_ns):
        srv = socket.socket(fam, socket.SOCK_STREAM)
    with netns.enter(src_ns):
        cli = socket.socket(fam, socket.SOCK_STREAM)
    payload = os.urandom(1 << 20) * (size >> 20)
    got = hashlib.sha256()
    received = [0]

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(timeout)
            while received[0] < size:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                got.update(chunk)
                received[0] += len(chunk)

    try:
        srv.bind((dst, port))
        srv.listen(1)
        srv.settimeout(timeout)
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        cli.settimeout(timeout)
        cli.connect((dst, port))
        cli.sendall(payload)
        cli.shutdown(socket.SHUT_WR)
        t.join(timeout)
        return received[0] == size and got.digest() == hashlib.sha256(payload).digest()
    finally:
        cli.close()
        srv.close()


@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
def test_bulk_tcp_and_a_smaller_uplink_mtu(outside_routes, bpffs_root, family):
    """Megabytes in large (GSO) skbs pod -> pod and pod -> outside, the latter out of an uplink
    with a smaller MTU than the path's ends: oversized packets go to the stack, whose ICMP "too
    big" lets the pod's TCP shrink its segments (path MTU discovery through the datapath)."""
    node = outside_routes
    eng = _engine(node, bpffs_root)
    eng.setup_uplink()
    pa, pb = node.pod(), node.pod()
    eng.add_endpoint(_spec(pa))
    eng.add_endpoint(_spec(pb, id="pod-b", v4=B4, v6=B6))
    _wait_dad(pa, pb)
    assert _bulk(pa, pb, B4 if family == 4 else B6, 7300)
    assert nkframe_l3.endpoint_stats(bpffs_root, "pod-a")["local"][0] > 10
    # Only the node's side shrinks: the outside still advertises a 1460-byte MSS, so the pod
    # sends segments the uplink cannot carry until the stack's ICMP tells it otherwise.
    links.set_mtu(node.uplink, 1300, netns=node.netns)
    before = nkframe_l3.endpoint_stats(bpffs_root, "pod-a")
    assert _bulk(pa, node.outside, "192.0.2.2" if family == 4 else "2001:db8:ff::2", 7301)
    after = nkframe_l3.endpoint_stats(bpffs_root, "pod-a")
    assert after["neigh"][0] - before["neigh"][0] > 10
    assert after["stack"][0] > before["stack"][0], "the first too-big segment went to the stack"
    eng.remove_endpoint("pod-a")
    eng.remove_endpoint("pod-b")
    eng.teardown_uplink()
