"""The L3 and L2 datapaths with real packets: pod <-> pod, pod -> outside, outside -> pod,
pod <-> node, IPv4 and IPv6, on the engine's own choice of device and mechanism (veth + TCX here,
netkit in the vm-netkit tier, TC in vm-legacy) and forced to TC.

Every case also checks that the BPF path carried the packets: the endpoint's (or uplink's)
counters moved, and for the redirect paths the node's IP stack forwarded nothing
(``ForwDatagrams`` / ``Ip6OutForwDatagrams`` of the node namespace stay put).  So a datapath that
silently handed everything to the stack would fail here, even though packets would still flow.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid

import pytest

import nkframe_l2
import nkframe_l3
from nkframe import netns
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.testing import tcp_connect, udp_probe
from nkframe.netlink.netkit import get_netkit as netkit_info
from nkframe.types import DeviceKind, EndpointSpec, Mechanism

pytestmark = pytest.mark.root

POD_NET4, POD_NET6 = "10.210.0.0/16", "fd00:210::/64"
NODE_IP = {4: "10.211.0.1", 6: "fd00:211::1"}  # on the node's lo: a node-local service address
OUTSIDE_IP = {4: "192.0.2.2", 6: "2001:db8:ff::2"}
PODS = {"a": {4: "10.210.0.10", 6: "fd00:210::10"}, "b": {4: "10.210.0.11", 6: "fd00:210::11"}}


def _uid() -> str:
    return uuid.uuid4().hex[:6]


def wait_dad(ns: str, timeout: float = 5.0) -> None:
    """Wait until no IPv6 address in ``ns`` is tentative (duplicate address detection done)."""
    deadline = time.monotonic() + timeout
    while True:
        with netns.enter(ns):
            with open("/proc/thread-self/net/if_inet6") as f:
                # columns: address, ifindex, prefix, scope, flags (hex), name; 0x40 = tentative
                tentative = [l.split()[-1] for l in f if int(l.split()[4], 16) & 0x40]
        if not tentative:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"IPv6 addresses still tentative in {ns} on {tentative}")
        time.sleep(0.05)


def forwarded(ns: str) -> dict[int, int]:
    """Packets the namespace's IP stack forwarded so far, per family."""
    with netns.enter(ns):
        with open("/proc/thread-self/net/snmp") as f:
            rows = [l.split() for l in f if l.startswith("Ip:")]
        with open("/proc/thread-self/net/snmp6") as f:
            v6 = dict(l.split() for l in f if l.strip())
    v4 = dict(zip(rows[0][1:], rows[1][1:]))
    return {4: int(v4["ForwDatagrams"]), 6: int(v6["Ip6OutForwDatagrams"])}


class Bed:
    """node + outside (joined by up0/ext0) + two pods on one datapath mode and attach mode."""

    def __init__(self, bpffs: str, mode: str, attach: str):
        self.made: list[str] = []
        self.mode, self.attach = mode, attach
        self.root = os.path.join(bpffs, f"m{_uid()}")
        os.mkdir(self.root)
        self.node = self._ns("node")
        self.outside = self._ns("out")
        links.create_veth(links.VethSpec(name="up0", peer_name="ext0", peer_netns=self.outside), netns=self.node)
        for ns, dev, v4, v6 in ((self.node, "up0", "192.0.2.1/24", "2001:db8:ff::1/64"), (self.outside, "ext0", "192.0.2.2/24", "2001:db8:ff::2/64")):
            links.add_address(dev, v4, netns=ns)
            links.add_address(dev, v6, netns=ns, nodad=True)
            links.set_up("lo", netns=ns)
            links.set_up(dev, netns=ns)
        links.add_address("lo", f"{NODE_IP[4]}/32", netns=self.node)
        links.add_address("lo", f"{NODE_IP[6]}/128", netns=self.node, nodad=True)
        # The outside reaches the pod networks through the node's uplink address.
        links.add_route(POD_NET4, via="192.0.2.1", netns=self.outside)
        links.add_route(POD_NET6, via="2001:db8:ff::1", netns=self.outside)
        self.engine = Engine(self.node, self.root, plugin_objects=[nkframe_l3, nkframe_l2], autoload=False, attach=attach, uplink="up0")
        self.uplink = self.engine.setup_uplink()
        self.pods: dict[str, str] = {}
        self.eps = {}
        for name, addrs in PODS.items():
            ns = self._ns(f"p{name}")
            self.pods[name] = ns
            spec = EndpointSpec(id=f"pod-{name}", netns=ns, mode=mode, addresses=[f"{addrs[4]}/32", f"{addrs[6]}/128"])
            self.eps[name] = self.engine.add_endpoint(spec)
        for ns in (self.node, self.outside, *self.pods.values()):
            wait_dad(ns)

    def _ns(self, prefix: str) -> str:
        name = f"nkt-{prefix}-{_uid()}"
        netns.create(name)
        self.made.append(name)
        return name

    def close(self) -> None:
        try:
            for name in list(self.eps):
                self.engine.remove_endpoint(f"pod-{name}")
            self.engine.teardown_uplink()
        finally:
            for name in reversed(self.made):
                netns.delete(name)
            shutil.rmtree(self.root, ignore_errors=True)

    def snapshot(self) -> dict:
        snap = {f"pod-{n}": nkframe_l3.endpoint_stats(self.root, f"pod-{n}") for n in self.pods}
        snap["uplink"] = nkframe_l3.uplink_stats(self.root, "up0")
        snap["forwarded"] = forwarded(self.node)
        return snap


def moved(before: dict, after: dict, who: str, counter: str) -> int:
    return after[who][counter][0] - before[who][counter][0]


# Forced TC is checked on every kernel; "auto" is whatever the engine picks here (TCX on this
# host, netkit in vm-netkit, TC in vm-legacy).
@pytest.fixture(scope="module", params=[("l3", "auto"), ("l3", "tc"), ("l2", "auto"), ("l2", "tc")], ids=lambda p: f"{p[0]}-{p[1]}")
def bed(request, bpffs):
    b = Bed(bpffs, *request.param)
    try:
        yield b
    finally:
        b.close()


FAMILIES = pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])


def test_mechanism_is_the_one_asked_for(bed):
    for ep in bed.eps.values():
        if bed.attach == "tc":
            assert set(ep.mechanism.values()) == {Mechanism.TC}
        assert [p.name for p in ep.programs] == [f"{bed.mode}_fwd"]
    assert [p.name for p in bed.uplink] == ["dp_uplink"]


@pytest.mark.netkit
def test_auto_uses_netkit_where_the_kernel_has_it(bed):
    """On a netkit kernel the matrix above runs over netkit devices (L3 or L2 mode) with native
    netkit links; elsewhere this has nothing to check."""
    from nkframe import probe

    if not probe.features().supported("netkit"):
        pytest.skip(f"no netkit: {probe.features()['netkit'].reason}")
    for ep in bed.eps.values():
        assert ep.device_kind is DeviceKind.NETKIT
        if bed.attach == "auto":
            assert set(ep.mechanism.values()) == {Mechanism.NETKIT}
    info = netkit_info(bed.eps["a"].spec.node_ifname, netns=bed.node)
    assert info.mode.name.lower() == bed.mode


@FAMILIES
def test_pod_to_pod(bed, family):
    before = bed.snapshot()
    dst = PODS["b"][family]
    assert udp_probe(bed.pods["a"], bed.pods["b"], dst, count=3) == 3
    assert tcp_connect(bed.pods["a"], bed.pods["b"], dst, 7001)
    after = bed.snapshot()
    # a -> b and b's replies -> a both went pod program -> bpf_redirect, never the node's stack
    assert moved(before, after, "pod-a", "local") >= 3 + 2
    assert moved(before, after, "pod-b", "local") >= 2
    assert after["forwarded"][family] == before["forwarded"][family]


@FAMILIES
def test_pod_to_outside(bed, family):
    before = bed.snapshot()
    dst = OUTSIDE_IP[family]
    assert udp_probe(bed.pods["a"], bed.outside, dst, count=3) == 3
    assert tcp_connect(bed.pods["a"], bed.outside, dst, 7002)
    after = bed.snapshot()
    assert moved(before, after, "pod-a", "neigh") >= 3 + 2
    # the outside's replies came back through the uplink program
    assert moved(before, after, "uplink", "peer") + moved(before, after, "uplink", "uplink_via_dev") >= 2
    assert after["forwarded"][family] == before["forwarded"][family]


@FAMILIES
def test_outside_to_pod(bed, family):
    before = bed.snapshot()
    dst = PODS["a"][family]
    assert udp_probe(bed.outside, bed.pods["a"], dst, count=3) == 3
    assert tcp_connect(bed.outside, bed.pods["a"], dst, 7003)
    after = bed.snapshot()
    assert moved(before, after, "uplink", "peer") >= 3 + 2
    assert moved(before, after, "pod-a", "neigh") >= 2  # the pod's replies
    assert after["forwarded"][family] == before["forwarded"][family]


@FAMILIES
@pytest.mark.parametrize("target", ["lo", "uplink"])
def test_pod_to_node(bed, family, target):
    before = bed.snapshot()
    dst = NODE_IP[family] if target == "lo" else {4: "192.0.2.1", 6: "2001:db8:ff::1"}[family]
    assert udp_probe(bed.pods["a"], bed.node, dst, count=3) == 3
    assert tcp_connect(bed.pods["a"], bed.node, dst, 7004)
    after = bed.snapshot()
    # the FIB says "local": the program hands the packets to the node's stack
    assert moved(before, after, "pod-a", "stack") >= 3 + 2
    assert moved(before, after, "pod-a", "local") == 0


@FAMILIES
def test_node_to_pod(bed, family):
    before = bed.snapshot()
    dst = PODS["a"][family]
    assert udp_probe(bed.node, bed.pods["a"], dst, count=3) == 3
    assert tcp_connect(bed.node, bed.pods["a"], dst, 7005)
    after = bed.snapshot()
    assert moved(before, after, "pod-a", "stack") >= 2  # the pod's replies to a node address


@FAMILIES
def test_pod_to_unrouted_goes_to_the_stack(bed, family):
    """No route in the node: the program hands the packet to the stack (which refuses it)."""
    before = bed.snapshot()
    dst = {4: "198.51.100.7", 6: "2001:db8:dead::7"}[family]
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    with netns.enter(bed.pods["a"]):
        s = socket.socket(fam, socket.SOCK_DGRAM)
    with s:
        s.sendto(b"nowhere", (dst, 9))
    deadline = time.monotonic() + 2
    while moved(before, bed.snapshot(), "pod-a", "stack") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = bed.snapshot()
    assert moved(before, after, "pod-a", "stack") >= 1
    assert moved(before, after, "pod-a", "neigh") == 0
