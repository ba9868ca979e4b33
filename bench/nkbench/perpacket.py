"""Per-packet cost: BPF_PROG_TEST_RUN ns per packet of the datapath programs (L3, L2, uplink)
of the policy program with 10, 1,000 and 10,000 rules per direction, and of a whole from-pod chain
(policy, then L3 forwarding), each beside an empty ``tc`` program (``policy_baseline``:
``return -1``; as many of them as the chain has programs) measured the same way in the same run.

The programs are the real ones: the datapath programs are taken from the links of endpoints an
Engine built on a node (so their maps hold real entries and their FIB lookups see the node's
routes: test runs execute inside the node's namespace); endpoints with a policy of n rules get
their policy programs through the policy plugin like any endpoint.  Each program's return value is checked first, so a
figure is the path it claims (7 = TC_ACT_REDIRECT for forwarding).

Forwarding rewrites the packet in place (TTL - 1) and a test run reuses one skb for all its
repetitions, so one call runs ``REPEAT`` = 250 times starting at TTL 255: every repetition
takes the forwarding path.  A run is the median of ``CALLS`` calls' in-kernel averages; the
figure is the median of ``ROUNDS`` runs, alternating program and baseline so both see the same
machine state.
"""

from __future__ import annotations

import ipaddress
import os
import statistics
import struct
import time

from nkbench.core import Recorder, Stat
from nkbench.topo import Node, Scope

REPEAT = 250
CALLS, ROUNDS = 300, 7
POLICY_SIZES = (10, 1_000, 10_000)

POD = {"a": ("10.1.0.1", "fd00:1::1"), "b": ("10.1.0.2", "fd00:1::2"), "c": ("10.1.0.3", "fd00:1::3")}
OUT4, OUT6 = "192.0.2.2", "2001:db8:ff::2"


def _csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def packet(src: str, dst: str, *, dmac: bytes = b"\x02\0\0\0\0\x02", smac: bytes = b"\x02\0\0\0\0\x01",
           payload: int = 64) -> bytes:
    """Ethernet + IPv4/IPv6 (TTL/hop limit 255) + a TCP segment with ``payload`` bytes."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1, 0, 5 << 4, 0x10, 65535, 0, 0) + b"\xab" * payload
    if ipaddress.ip_address(src).version == 4:
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 255, 6, 0,
                        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
        h = h[:10] + struct.pack("!H", _csum(h)) + h[12:]
        return dmac + smac + b"\x08\x00" + h + tcp
    h = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 255, ipaddress.IPv6Address(src).packed,
                    ipaddress.IPv6Address(dst).packed)
    return dmac + smac + b"\x86\xdd" + h + tcp


def _one_run(prog, data: bytes, calls: int) -> float:
    return statistics.median(prog.test_run(data, repeat=REPEAT).duration_ns for _ in range(calls))


def measure(chain: list, empty, data: bytes, rounds: int, calls: int) -> tuple[Stat, Stat]:
    """A chain's cost (the sum of its programs' runs on the packet) and, interleaved, as many
    empty programs' on the same packet."""
    p, b = [], []
    for _ in range(rounds):
        p.append(sum(_one_run(prog, data, calls) for prog in chain))
        b.append(sum(_one_run(empty, data, calls) for _ in chain))
    return Stat.of(p), Stat.of(b)


def run(rec: Recorder, scope: Scope, *, quick: bool = False) -> None:
    from nkframe import bpf, netns
    from nkframe.engine import Engine
    from nkframe.netlink import links
    from nkframe.types import EndpointSpec
    from nkframe_l3 import derived_mac
    from nkframe_policy import plugin as policy_plugin
    from nkframe_policy.maps import PolicyMaps
    from nkframe_policy.strategies import bench_policy

    rec.section = "perpacket"
    rounds, calls = (2, 20) if quick else (ROUNDS, CALLS)
    sizes = POLICY_SIZES[:2] if quick else POLICY_SIZES
    rec.log(f"per-packet cost: {rounds} rounds x {calls} test runs x {REPEAT} repetitions per figure")
    root = scope.bpffs()
    node = Node(scope, prefix="nd")
    links.add_address(node.uplink, "2001:db8:ff::1/64", netns=node.netns)
    links.add_address("ext0", f"{OUT6}/64", netns=node.outside)
    # A default route out of the uplink, so a policy rule's destination (anywhere in 10/8 and
    # fd00::/32) is forwarded like any address outside the node.
    links.add_route("default", via=OUT4, netns=node.netns)
    links.add_route("default6", via=OUT6, netns=node.netns)
    eng = Engine(node.netns, os.path.join(root, "dp"), plugins=["l3", "l2", "policy"], uplink=node.uplink)
    eng.setup_uplink()
    scope.defer("uplink programs", eng.teardown_uplink)
    policies = {n: bench_policy(n, seed=7) for n in sizes}
    specs = {f"pp-{k}": dict(addresses=[f"{v4}/32", f"{v6}/128"], mode="l2" if k == "c" else "l3") for k, (v4, v6) in POD.items()}
    # An endpoint's spec (options included) must fit bpffs's 4 KiB spec slot, so these endpoints
    # are added with an allow-all policy and get their n rules through the policy plugin's apply().
    for i, n in enumerate(sizes):
        specs[f"pp-r{n}"] = dict(addresses=[f"10.1.1.{i + 1}/32"], options={"policy": {"default_ingress": "allow", "default_egress": "allow"}})
    for eid, kw in specs.items():
        eng.add_endpoint(EndpointSpec(id=eid, netns=node.pod("pp"), **kw))
        scope.defer(f"endpoint {eid}", lambda eid=eid: eng.remove_endpoint(eid))
    for n in sizes:
        t0 = time.monotonic()
        policy_plugin.apply(str(eng.layout.root), f"pp-r{n}", policies[n])
        rec.log(f"policy of {n} rules per direction applied to pp-r{n} in {time.monotonic() - t0:.1f} s")

    def prog_of(owner: str, name: str):
        if owner == "uplink":
            # Listed from the kernel: names are the programs' own (the C function's name).
            att = next(a for a in eng.attached(node.uplink) if a.name in (name, "dp_uplink_in"))
        else:
            att = next(a for a in eng.get_endpoint(owner).programs if a.name == name)
        return bpf.Program.from_id(att.prog_id)

    pm = PolicyMaps(os.path.join(root, "baseline"))
    scope.defer("policy maps", pm.close)
    empty = pm.load_baseline()
    scope.defer("baseline program", empty.close)

    c_pod_mac = bytes.fromhex(derived_mac("pp-c", "pod").replace(":", ""))
    c_node_mac = bytes.fromhex(derived_mac("pp-c", "node").replace(":", ""))
    a4, a6 = POD["a"]
    b4, b6 = POD["b"]
    c4, _ = POD["c"]
    # (figure, owner, program, packet, expected return value)
    cases = [
        ("l3.pod-pod.v4", "pp-a", "l3_fwd", packet(a4, b4), 7),
        ("l3.pod-pod.v6", "pp-a", "l3_fwd", packet(a6, b6), 7),
        ("l3.pod-out.v4", "pp-a", "l3_fwd", packet(a4, OUT4), 7),
        ("l3.pod-out.v6", "pp-a", "l3_fwd", packet(a6, OUT6), 7),
        ("l3.out-pod.v4", "uplink", "dp_uplink", packet(OUT4, a4), 7),
        ("l3.out-pod.v6", "uplink", "dp_uplink", packet(OUT6, a6), 7),
        ("l2.pod-pod.v4", "pp-c", "l2_fwd", packet(c4, a4, dmac=c_node_mac, smac=c_pod_mac), 7),
        ("l2.pod-out.v4", "pp-c", "l2_fwd", packet(c4, OUT4, dmac=c_node_mac, smac=c_pod_mac), 7),
    ]
    with netns.enter(node.netns):
        # The empty program, alone: the floor of a test run on this machine.
        rec.add("pkt.empty", Stat.of(_one_run(empty, packet(a4, b4), calls) for _ in range(rounds)), "ns")
        for name, owner, pname, data, want in cases:
            with prog_of(owner, pname) as prog:
                got = prog.test_run(data).retval
                if got != want:
                    rec.skip(f"pkt.{name}", f"{pname} returned {got}, not {want}: not the path this figure names")
                    continue
                p, b = measure([prog], empty, data, rounds, calls)
            base = rec.add(f"pkt.{name}.empty", b, "ns")
            rec.add(f"pkt.{name}", p, "ns", baseline=base)
            rec.log(f"pkt.{name}: {p.value:.1f} ns vs empty {b.value:.1f} ns")
        for i, n in enumerate(sizes):
            with prog_of(f"pp-r{n}", "policy_egress") as pol_prog, prog_of(f"pp-r{n}", "l3_fwd") as fwd:
                policy(rec, n, policies[n], f"10.1.1.{i + 1}", pol_prog, fwd, empty, rounds, calls)


def policy(rec: Recorder, n: int, pol, src4: str, prog, fwd, empty, rounds: int, calls: int) -> None:
    """``policy_egress`` of an endpoint whose policy has n rules per direction, alone, and in
    front of ``l3_fwd`` (the endpoint's whole from-pod chain) for a packet a rule allows."""
    import random

    from nkframe_policy.model import Action, Direction
    from nkframe_policy.reference import verdict

    rnd = random.Random(n)
    r4 = rnd.choice([r for r in pol.egress if r.version == 4])
    r6 = rnd.choice([r for r in pol.egress if r.version == 6])
    pkts = {
        "v4-rule": packet(src4, str(r4.cidr.network_address)),
        "v6-rule": packet("fd00:1::99", str(r6.cidr.network_address)),
        "v4-norule": packet(src4, "203.0.113.9"),
    }
    for kind, data in pkts.items():
        want = verdict(pol, Direction.EGRESS, data).tc_retval
        got = prog.test_run(data).retval
        if got != want:
            rec.skip(f"pkt.policy.r{n}.{kind}", f"BPF verdict {got} != reference {want}")
            continue
        p, b = measure([prog], empty, data, rounds, calls)
        base = rec.add(f"pkt.policy.r{n}.{kind}.empty", b, "ns")
        rec.add(f"pkt.policy.r{n}.{kind}", p, "ns", baseline=base)
        rec.log(f"pkt.policy.r{n}.{kind}: {p.value:.1f} ns vs empty {b.value:.1f} ns (+{p.value - b.value:.1f})")
    # The chain: a destination an allow rule covers, so policy hands on (-1) and l3_fwd forwards
    # it out of the uplink (7).  Baseline: as many empty programs as the chain has.
    allowed = [r for r in pol.egress if r.version == 4 and r.action is Action.ALLOW]
    for r in allowed:
        data = packet(src4, str(r.cidr.network_address))
        if verdict(pol, Direction.EGRESS, data).tc_retval == -1 and prog.test_run(data).retval == -1 and fwd.test_run(data).retval == 7:
            p, b = measure([prog, fwd], empty, data, rounds, calls)
            base = rec.add(f"pkt.chain.policy-r{n}+l3.pod-out.v4.empty", b, "ns")
            rec.add(f"pkt.chain.policy-r{n}+l3.pod-out.v4", p, "ns", baseline=base)
            rec.log(f"pkt.chain.policy-r{n}+l3: {p.value:.1f} ns vs {b.value:.1f} ns for two empty programs")
            return
    rec.skip(f"pkt.chain.policy-r{n}+l3", "no allow rule whose address the chain forwards")
