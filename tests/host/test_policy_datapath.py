"""The policy programs on real endpoints, with real packets, on whatever device the kernel gives
(veth on the host; netkit in the vm-netkit tier), L3 and L2 mode: egress judged on what a pod
sends, ingress on what it receives from another pod, counted exactly.

The packet layout differs per device and mode, so this is where a wrong header offset shows: a
policy that parses the wrong bytes lets everything through.  (It did: the programs were loaded
with no Ethernet header for netkit in L3 mode, where netkit_xmit() runs them on a frame with
zero MACs; every packet looked non-IP and passed.)
"""

from __future__ import annotations

import pytest

import nkframe_l2
import nkframe_l3
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import EndpointSpec
from nkframe_policy import Direction
from nkframe_policy import plugin as policy_plugin

pytestmark = pytest.mark.root

A4, A6 = "10.231.0.10", "fd00:231::10"
B4, B6 = "10.231.0.11", "fd00:231::11"
OPEN, CLOSED = 7000, 7001


def _policy_a():
    # Egress: no UDP to the outside's closed port.
    return {"egress": [
        {"action": "deny", "cidr": "192.0.2.0/24", "proto": "udp", "ports": CLOSED},
        {"action": "deny", "cidr": "2001:db8:ff::/64", "proto": "udp", "ports": CLOSED},
    ]}


def _policy_b():
    # Ingress: pod A may not reach the closed port.
    return {"ingress": [
        {"action": "deny", "cidr": f"{A4}/32", "proto": "udp", "ports": CLOSED},
        {"action": "deny", "cidr": f"{A6}/128", "proto": "udp", "ports": CLOSED},
    ]}


@pytest.fixture(params=["l3", "l2"])
def pods(request, node, bpffs_root):
    links.add_route("10.231.0.0/16", via="192.0.2.1", netns=node.outside)
    links.add_route("fd00:231::/64", via="2001:db8:ff::1", netns=node.outside)
    eng = Engine(node.netns, bpffs_root, plugin_objects=[nkframe_l3, nkframe_l2, policy_plugin],
                 autoload=False, uplink=node.uplink)
    try:
        eng.setup_uplink()
        a, b = node.pod("pa"), node.pod("pb")
        eps = {
            "pod-a": eng.add_endpoint(EndpointSpec(id="pod-a", netns=a, mode=request.param,
                                                   addresses=[f"{A4}/32", f"{A6}/128"],
                                                   options={"policy": _policy_a()})),
            "pod-b": eng.add_endpoint(EndpointSpec(id="pod-b", netns=b, mode=request.param,
                                                   addresses=[f"{B4}/32", f"{B6}/128"],
                                                   options={"policy": _policy_b()})),
        }
        yield node, eps, a, b
    finally:
        for eid in list(eng.layout.endpoint_ids()):
            eng.remove_endpoint(eid)
        eng.teardown_uplink()
        policy_plugin.forget(bpffs_root)


def _rule(root, eid, direction, index):
    return policy_plugin.counters(root, eid).rule(direction, index).packets


@pytest.mark.parametrize("family", [4, 6], ids=["v4", "v6"])
def test_egress_and_ingress_on_real_endpoints(pods, bpffs_root, family):
    node, eps, a, b = pods
    i = 0 if family == 4 else 1
    out, dst_b = ("192.0.2.2", B4) if family == 4 else ("2001:db8:ff::2", B6)
    kinds = {str(e.device_kind) for e in eps.values()}

    before = _rule(bpffs_root, "pod-a", Direction.EGRESS, i)
    assert udp_probe(a, node.outside, out, CLOSED, count=3, timeout=0.5) == 0, kinds
    assert _rule(bpffs_root, "pod-a", Direction.EGRESS, i) - before == 3
    assert udp_probe(a, node.outside, out, OPEN, count=3) == 3

    before = _rule(bpffs_root, "pod-b", Direction.INGRESS, i)
    assert udp_probe(a, b, dst_b, CLOSED, count=3, timeout=0.5) == 0, kinds
    assert _rule(bpffs_root, "pod-b", Direction.INGRESS, i) - before == 3
    assert udp_probe(a, b, dst_b, OPEN, count=3) == 3
    stats = policy_plugin.counters(bpffs_root, "pod-b").stats[Direction.INGRESS]
    assert stats["allow_default"].packets >= 3
