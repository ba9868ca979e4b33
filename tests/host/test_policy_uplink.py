"""Ingress policy for traffic from outside the node, with real packets.

Packets from the outside netns enter the node on its uplink, where the L3 datapath's uplink
program hands packets for a local pod straight to it — with bpf_redirect_peer() that skips the
node-side device, so the pod's to-pod policy_ingress never runs.  The policy plugin's own uplink
program (order 100, before the datapath's 500) judges them by the destination endpoint's ingress
policy first.  Checked on TCX and on TC, with the datapath delivering through the node-side
device (its choice while to-pod programs are attached) and with redirect_peer.
"""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

import nkframe_l3
from nkframe import bpf, netns
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.testing import tcp_connect, udp_probe
from nkframe.types import EndpointSpec
from nkframe_fwd import datapath
from nkframe_fwd import layout as l3_layout
from nkframe_policy import Direction
from nkframe_policy import plugin as policy_plugin

pytestmark = pytest.mark.root

POD4, POD6 = "10.230.0.10", "fd00:230::10"
OPEN, CLOSED = 8080, 9090
POLICY = {
    "default_ingress": "deny",
    "ingress": [
        {"action": "allow", "cidr": "192.0.2.0/24", "proto": "tcp", "ports": OPEN},
        {"action": "allow", "cidr": "2001:db8:ff::/64", "proto": "tcp", "ports": OPEN},
        {"action": "allow", "cidr": "192.0.2.0/24", "proto": "udp", "ports": OPEN},
        {"action": "allow", "cidr": "2001:db8:ff::/64", "proto": "udp", "ports": OPEN},
        # Explicit denies for UDP to the closed port, so their own counters count exactly
        # (the default also drops the node's IPv6 neighbour discovery and MLD to the pod).
        {"action": "deny", "cidr": "192.0.2.0/24", "proto": "udp", "ports": CLOSED},
        {"action": "deny", "cidr": "2001:db8:ff::/64", "proto": "udp", "ports": CLOSED},
    ],
}


def _wait_dad(*namespaces: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    for ns in namespaces:
        while True:
            with netns.enter(ns):
                with open("/proc/thread-self/net/if_inet6") as f:
                    tentative = [line for line in f if int(line.split()[4], 16) & 0x40]
            if not tentative:
                break
            assert time.monotonic() < deadline, f"IPv6 addresses still tentative in {ns}"
            time.sleep(0.05)


@contextlib.contextmanager
def _one_pod(node, bpffs_root, attach, options):
    """A node with the L3 datapath and the policy plugin, its uplink programs attached, and one
    pod (pod-a) with ``options``."""
    links.add_route("10.230.0.0/16", via="192.0.2.1", netns=node.outside)
    links.add_route("fd00:230::/64", via="2001:db8:ff::1", netns=node.outside)
    eng = Engine(node.netns, bpffs_root, plugin_objects=[nkframe_l3, policy_plugin],
                 autoload=False, uplink=node.uplink, attach=attach)
    try:
        eng.setup_uplink()
        pod = node.pod()
        eng.add_endpoint(EndpointSpec(id="pod-a", netns=pod, addresses=[f"{POD4}/32", f"{POD6}/128"], options=options))
        _wait_dad(node.netns, node.outside, pod)
        yield eng, pod
    finally:
        for eid in list(eng.layout.endpoint_ids()):
            eng.remove_endpoint(eid)
        eng.teardown_uplink()
        policy_plugin.forget(bpffs_root)


@pytest.fixture(params=["auto", "tc"])
def cluster(request, node, bpffs_root):
    """One pod whose ingress policy allows only port OPEN from the outside."""
    with _one_pod(node, bpffs_root, request.param, {"policy": POLICY}) as (eng, pod):
        yield node, eng, pod


def _counters(root):
    c = policy_plugin.counters(root, "pod-a")
    return {
        "deny_rule": c.stats[Direction.INGRESS]["deny_rule"].packets,
        "deny_default": c.stats[Direction.INGRESS]["deny_default"].packets,
        "allow_rule": c.stats[Direction.INGRESS]["allow_rule"].packets,
        "udp_allow": c.rule(Direction.INGRESS, 2).packets + c.rule(Direction.INGRESS, 3).packets,
        "udp_deny": c.rule(Direction.INGRESS, 4).packets + c.rule(Direction.INGRESS, 5).packets,
        "drops": c.drops["policy_deny"].packets,
    }


def _uplink(root, ifname):
    s = nkframe_l3.uplink_stats(root, ifname)
    return {k: s[k][0] for k in ("peer", "uplink_via_dev")}


def _redirect_peer_only(root):
    """Make the datapath deliver with bpf_redirect_peer() even though to-pod programs are
    attached (clear its 'to-pod chain' flag): the to-pod policy_ingress is skipped from now on,
    so only the uplink program can judge."""
    path = datapath.endpoints_map_path(root)
    with bpf.Map.from_pin(path) as m:
        for key, value in m.items():
            entry = l3_layout.EndpointEntry.unpack(value)
            m.update(key, l3_layout.EndpointEntry(entry.ifindex, 0, entry.owner, entry.pod_mac,
                                                  entry.node_mac).pack())


@pytest.mark.parametrize("delivery", ["via-device", "redirect-peer"])
def test_outside_to_pod_is_judged_on_the_uplink(cluster, bpffs_root, delivery):
    node, eng, pod = cluster
    names = [a.name for a in eng.attached(node.uplink) if a.direction == "ingress"]
    assert names.index("policy_uplink") < names.index("dp_uplink_in"), names
    if delivery == "redirect-peer":
        _redirect_peer_only(bpffs_root)

    for dst in (POD4, POD6):
        before, up_before = _counters(bpffs_root), _uplink(bpffs_root, node.uplink)
        # Closed port: every datagram is dropped by the uplink program, before the datapath
        # (order 500) sees it, so its delivery counters stay put.
        assert udp_probe(node.outside, pod, dst, CLOSED, count=3, timeout=0.5) == 0
        after, up_after = _counters(bpffs_root), _uplink(bpffs_root, node.uplink)
        assert after["udp_deny"] - before["udp_deny"] == 3
        assert after["deny_rule"] - before["deny_rule"] == 3
        assert after["drops"] - before["drops"] == 3
        assert up_after == up_before, "the datapath saw packets the policy dropped"
        # TCP to the closed port falls to the default (deny).
        before = _counters(bpffs_root)
        assert not tcp_connect(node.outside, pod, dst, CLOSED, timeout=1.0)
        assert _counters(bpffs_root)["deny_default"] > before["deny_default"]

        # Open port: delivered, and counted by the allow rule.
        before, up_before = _counters(bpffs_root), _uplink(bpffs_root, node.uplink)
        assert udp_probe(node.outside, pod, dst, OPEN, count=3) == 3
        after, up_after = _counters(bpffs_root), _uplink(bpffs_root, node.uplink)
        moved = after["udp_allow"] - before["udp_allow"]
        delivered = {k: up_after[k] - up_before[k] for k in up_after}
        if delivery == "redirect-peer":
            # Judged once, on the uplink; the to-pod program never sees the packets.
            assert delivered["peer"] == 3 and moved == 3
        else:
            # Judged on the uplink and again by policy_ingress on the node-side device.
            assert delivered["uplink_via_dev"] == 3 and moved == 6
        assert tcp_connect(node.outside, pod, dst, OPEN, timeout=2.5)
    assert _counters(bpffs_root)["allow_rule"] > 0


def test_uplink_ignores_other_destinations_and_forgets_removed_endpoints(cluster, bpffs_root):
    node, eng, pod = cluster
    pm = policy_plugin.policy_maps(bpffs_root)
    assert {str(a) for a in pm.addresses("pod-a")} == {POD4, POD6}
    # The node itself is no endpoint: its traffic is not judged (no counter moves; the default
    # deny also counts the node's own IPv6 neighbour discovery and MLD to the pod, so it is
    # left out).
    def quiet():
        c = _counters(bpffs_root)
        del c["deny_default"]
        return c

    before = quiet()
    with netns.enter(node.netns):
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        srv.bind(("192.0.2.1", CLOSED))
        assert udp_probe(node.outside, node.netns, "192.0.2.1", CLOSED + 1, count=2) == 2
    finally:
        srv.close()
    assert quiet() == before
    eng.remove_endpoint("pod-a")
    assert pm.addresses("pod-a") == set()
    with bpf.Map.from_pin(f"{bpffs_root}/globals/maps/nk_pol_addrs") as m:
        assert list(m.keys()) == []


@pytest.fixture(params=["auto", "tc"])
def bare_cluster(request, node, bpffs_root):
    """Like ``cluster``, but the pod is created WITHOUT a policy (it gets one later)."""
    with _one_pod(node, bpffs_root, request.param, {}) as (eng, pod):
        yield node, eng, pod, request.param


def test_policy_applied_after_creation_is_enforced_from_outside(bare_cluster, bpffs_root, tmp_path):
    """Issue 19: an endpoint created without a policy and given one with `nkframe policy apply`
    used to receive every packet from outside the node (its addresses never reached the
    uplink program's map).  Real traffic from the outside namespace, before and after."""
    import json

    from click.testing import CliRunner

    from nkframe.cli import cli

    node, eng, pod, attach = bare_cluster
    # No policy yet: everything from outside reaches the pod.
    for dst in (POD4, POD6):
        assert udp_probe(node.outside, pod, dst, CLOSED, count=3) == 3
    path = tmp_path / "deny.json"
    path.write_text(json.dumps(POLICY))
    res = CliRunner().invoke(cli, ["--netns", node.netns, "--bpffs-root", bpffs_root, "--attach", attach,
                                   "--no-agent", "policy", "apply", "pod-a", "-f", str(path)])
    assert res.exit_code == 0, res.output
    pm = policy_plugin.policy_maps(bpffs_root)
    assert {str(a) for a in pm.addresses("pod-a")} == {POD4, POD6}
    for dst in (POD4, POD6):
        before = _counters(bpffs_root)
        assert udp_probe(node.outside, pod, dst, CLOSED, count=3, timeout=0.5) == 0
        assert _counters(bpffs_root)["udp_deny"] - before["udp_deny"] >= 3
        assert not tcp_connect(node.outside, pod, dst, CLOSED, timeout=1.0)
        assert udp_probe(node.outside, pod, dst, OPEN, count=3) == 3
        assert tcp_connect(node.outside, pod, dst, OPEN, timeout=2.5)
    # With the datapath forced to redirect_peer (skipping the to-pod programs) the uplink
    # program alone still judges.
    _redirect_peer_only(bpffs_root)
    for dst in (POD4, POD6):
        assert udp_probe(node.outside, pod, dst, CLOSED, count=3, timeout=0.5) == 0
        assert udp_probe(node.outside, pod, dst, OPEN, count=3) == 3


def test_policy_remove_takes_the_policy_away_everywhere(cluster, bpffs_root):
    """`nkframe policy remove`: the programs go, the slot and addresses leave the maps, the
    spec loses the policy, and traffic from outside the node passes again."""
    from click.testing import CliRunner

    from nkframe.cli import cli

    node, eng, pod = cluster
    assert udp_probe(node.outside, pod, POD4, CLOSED, count=3, timeout=0.5) == 0
    attach = eng.get_endpoint("pod-a").programs[0].mechanism.value
    args = ["--netns", node.netns, "--bpffs-root", bpffs_root, "--no-agent",
            "--attach", "tc" if attach == "tc" else "auto", "policy", "remove", "pod-a"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "removed" in res.output
    ep = eng.get_endpoint("pod-a")
    assert "policy" not in ep.spec.options
    assert not [p for p in ep.programs if p.name.startswith("policy_")], ep.programs
    assert policy_plugin.policy_maps(bpffs_root).addresses("pod-a") == set()
    for dst in (POD4, POD6):
        assert udp_probe(node.outside, pod, dst, CLOSED, count=3) == 3
    # A second remove is a no-op that says so.
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0 and "no policy" in res.output, res.output
