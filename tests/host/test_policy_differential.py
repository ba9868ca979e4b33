"""Random policies against the reference evaluator with real traffic, applied at creation and
applied later (issue 19: a policy applied after creation was bypassed by traffic from outside).

One target pod gets a random policy whose rules are about the addresses that really send to it
(another pod, the node, a host outside the node) and the ports probed; UDP datagrams are sent
from each of them to the target (ingress) and from the target to each (egress), IPv4 and IPv6,
and each datagram's fate must be the reference evaluator's verdict.  On TCX and tc here, and
on netkit in the VM tier.
"""

from __future__ import annotations

import json
import random
import socket

import pytest
from click.testing import CliRunner

import nkframe_l3
from nkframe import netns
from nkframe.cli import cli
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import EndpointSpec
from nkframe_policy import Direction, Policy, PolicyError, verdict
from nkframe_policy import packet as pk
from nkframe_policy import plugin as policy_plugin

pytestmark = pytest.mark.root

T4, T6 = "10.231.0.10", "fd00:231::10"
C4, C6 = "10.231.0.11", "fd00:231::11"
PORTS = (7000, 7001, 7002)
POLICIES_PER_MODE = 3


def _source_towards(ns: str, dst: str) -> str:
    """The source address the kernel in ``ns`` picks for ``dst``."""
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with netns.enter(ns):
        s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.connect((dst, 9))
        return s.getsockname()[0]
    finally:
        s.close()


def _random_policy(rnd: random.Random, peers: list[str]) -> Policy:
    def rule():
        peer = rnd.choice(peers)
        v6 = ":" in peer
        cidr = rnd.choice([
            f"{peer}/{128 if v6 else 32}",
            str(__import__("ipaddress").ip_network(f"{peer}/{64 if v6 else 24}", strict=False)),
            "::/0" if v6 else "0.0.0.0/0",
            "2001:db8:77::/48" if v6 else "203.0.113.0/24",  # matches nobody
        ])
        proto = rnd.choice(["udp", "udp", "any", "tcp", "icmp"])
        r = {"action": rnd.choice(["allow", "deny"]), "cidr": cidr, "proto": proto}
        if proto == "udp" and rnd.random() < 0.7:
            lo = rnd.choice(PORTS)
            r["ports"] = lo if rnd.random() < 0.5 else f"{lo}-{lo + rnd.randint(0, 2)}"
        return r

    while True:
        doc = {"default_ingress": rnd.choice(["allow", "deny"]),
               "default_egress": rnd.choice(["allow", "deny"]),
               "ingress": [rule() for _ in range(rnd.randint(0, 5))],
               "egress": [rule() for _ in range(rnd.randint(0, 5))]}
        try:
            return Policy.from_dict(doc)
        except PolicyError:
            continue  # a conflicting pair: draw again


@pytest.fixture(params=["auto", "tc"])
def topo(request, node, bpffs_root):
    links.add_route("10.231.0.0/16", via="192.0.2.1", netns=node.outside)
    links.add_route("fd00:231::/64", via="2001:db8:ff::1", netns=node.outside)
    eng = Engine(node.netns, bpffs_root, plugin_objects=[nkframe_l3, policy_plugin],
                 autoload=False, uplink=node.uplink, attach=request.param)
    try:
        eng.setup_uplink()
        client = node.pod()
        eng.add_endpoint(EndpointSpec(id="client", netns=client, addresses=[f"{C4}/32", f"{C6}/128"]))
        yield node, eng, client, request.param
    finally:
        for eid in list(eng.layout.endpoint_ids()):
            eng.remove_endpoint(eid)
        eng.teardown_uplink()
        policy_plugin.forget(bpffs_root)


@pytest.mark.parametrize("when", ["at-creation", "later"])
def test_random_policies_match_the_reference_with_real_traffic(topo, bpffs_root, tmp_path, when):
    node, eng, client, attach = topo
    rnd = random.Random(f"{attach}-{when}-19")
    checked = mismatches = 0
    report = []
    for round_ in range(POLICIES_PER_MODE):
        target = node.pod()
        peers_ns = {"client": client, "node": node.netns, "outside": node.outside}
        # Who sends from which address (the node's source is what its routing picks for a pod).
        senders = {name: {4: _source_towards(ns, C4) if name == "node" else None,
                          6: _source_towards(ns, C6) if name == "node" else None}
                   for name, ns in peers_ns.items()}
        senders["client"] = {4: C4, 6: C6}
        senders["outside"] = {4: "192.0.2.2", 6: "2001:db8:ff::2"}
        pol = _random_policy(rnd, [a for s in senders.values() for a in s.values()])
        spec = EndpointSpec(id="target", netns=target, addresses=[f"{T4}/32", f"{T6}/128"],
                            options={"policy": pol.to_dict()} if when == "at-creation" else {})
        eng.add_endpoint(spec)
        if when == "later":
            path = tmp_path / f"p{round_}.json"
            path.write_text(json.dumps(pol.to_dict()))
            res = CliRunner().invoke(cli, ["--netns", node.netns, "--bpffs-root", bpffs_root,
                                           "--attach", attach, "--no-agent", "policy", "apply",
                                           "target", "-f", str(path)])
            assert res.exit_code == 0, res.output
        for name, ns in peers_ns.items():
            for fam, tip in ((4, T4), (6, T6)):
                src = senders[name][fam]
                for port in rnd.sample(PORTS, 2):
                    # ingress: name -> target
                    want = verdict(pol, Direction.INGRESS, pk.build(src, tip, 17, dport=port)).action.value
                    got = "allow" if udp_probe(ns, target, tip, port, count=2, timeout=0.4, src_ip=src) else "deny"
                    checked += 1
                    if got != want:
                        mismatches += 1
                        report.append(f"ingress {name} {src} -> {tip}:{port}: want {want}, got {got}")
                # egress: target -> name (to the sender's address)
                port = rnd.choice(PORTS)
                want = verdict(pol, Direction.EGRESS, pk.build(tip, src, 17, dport=port)).action.value
                got = "allow" if udp_probe(target, ns, src, port, count=2, timeout=0.4) else "deny"
                checked += 1
                if got != want:
                    mismatches += 1
                    report.append(f"egress {tip} -> {name} {src}:{port}: want {want}, got {got}")
        if report:
            report.append(f"policy {round_}: {json.dumps(pol.to_dict())}")
            break
        eng.remove_endpoint("target")
    print(f"{attach} {when}: {checked} probes, {mismatches} mismatches")
    assert mismatches == 0, "\n".join(report)
