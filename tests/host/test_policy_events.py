"""Drop events (``nkframe events``): the policy programs write one record per drop into the
pinned ring buffer; the reader decodes time, endpoint, hook, reason, 5-tuple and rule.

Packets come from PROG_TEST_RUN (every reason, every hook, exact tuples) and from real traffic
between namespaces; the CLI is run against a real ring.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from nkframe import events
from nkframe.cli import cli
from nkframe_policy import Direction, Policy, Rule
from nkframe_policy import packet as pk
from nkframe_policy.maps import PolicyMaps

pytestmark = pytest.mark.root

POLICY = Policy(
    egress=[Rule.deny("192.0.2.0/24", "udp", 53), Rule.allow("0.0.0.0/0"), Rule.allow("::/0")],
    ingress=[Rule.allow("2001:db8::/32", "tcp", 443)],
    default_ingress="deny",
)


@pytest.fixture
def maps_dir(bpffs_root):
    return os.path.join(bpffs_root, "globals", "maps")


@pytest.fixture
def pm(maps_dir):
    with PolicyMaps(maps_dir) as pm:
        yield pm


def test_every_drop_is_an_event_with_its_tuple_and_reason(pm, maps_dir):
    pm.apply("pod-a", POLICY)
    pm.set_addresses("pod-a", ["10.0.0.5", "fd00::5"])
    pm.reserve("pod-bare")  # a slot without a policy: fails closed
    egress, ingress = pm.load_programs("pod-a")
    bare_egress, bare_ingress = pm.load_programs("pod-bare")
    uplink = pm.load_uplink()
    deny_id = pm.rule_id("pod-a", Direction.EGRESS, POLICY.egress[0])
    try:
        with events.EventReader(maps_dir) as reader:
            reader.skip_backlog()
            t0 = time.time()
            sent = [
                (egress, pk.build("10.0.0.5", "192.0.2.9", pk.IPPROTO_UDP, sport=5353, dport=53)),
                (ingress, pk.build("2001:db8::7", "fd00::5", pk.IPPROTO_TCP, sport=40001, dport=22)),
                (ingress, pk.build("2001:db8::7", "fd00::5", pk.IPPROTO_TCP, dport=443)),  # allowed
                (egress, pk.build("10.0.0.5", "192.0.2.9", pk.IPPROTO_TCP, truncate=20 + 10)),
                (bare_egress, pk.build("10.0.0.6", "192.0.2.9", pk.IPPROTO_ICMP)),
                (uplink, pk.build("198.51.100.1", "10.0.0.5", pk.IPPROTO_UDP, sport=999, dport=7)),
                (uplink, pk.build("198.51.100.1", "10.9.9.9", pk.IPPROTO_UDP)),  # not local
                (egress, pk.arp()),  # non-IP: continues
            ]
            rets = [prog.test_run(raw).retval for prog, raw in sent]
            assert rets == [2, 2, -1, 2, 2, 2, -1, -1]
            got = reader.read(timeout=2.0)
    finally:
        for p in (egress, ingress, bare_egress, bare_ingress, uplink):
            p.close()
    ip = ipaddress.ip_address
    want = [
        ("pod-a", "from-pod", "policy_deny", "udp", ip("10.0.0.5"), 5353, ip("192.0.2.9"), 53, deny_id),
        ("pod-a", "to-pod", "policy_default", "tcp", ip("2001:db8::7"), 40001, ip("fd00::5"), 22, None),
        ("pod-a", "from-pod", "malformed", "tcp", ip("10.0.0.5"), None, ip("192.0.2.9"), None, None),
        ("pod-bare", "from-pod", "no_policy", "icmp", ip("10.0.0.6"), None, ip("192.0.2.9"), None, None),
        ("pod-a", "uplink", "policy_default", "udp", ip("198.51.100.1"), 999, ip("10.0.0.5"), 7, None),
    ]
    assert [(e.endpoint, e.hook, e.reason, e.proto_name, e.src, e.sport, e.dst, e.dport, e.rule_id)
            for e in got] == want
    assert [e.length for e in got] == [len(sent[i][1]) for i in (0, 1, 3, 4, 5)]
    for e in got:
        assert e.slot == pm.slot(e.endpoint)
        assert t0 - 1 <= e.time <= time.time() + 1
    assert got == sorted(got, key=lambda e: e.ts_ns)
    doc = got[0].to_dict()
    assert (doc["endpoint"], doc["reason"], doc["src"], doc["sport"], doc["dst"], doc["dport"],
            doc["proto"]) == ("pod-a", "policy_deny", "10.0.0.5", 5353, "192.0.2.9", 53, "udp")
    assert "pod-a from-pod policy_deny" in got[0].describe()
    assert "10.0.0.5:5353 -> 192.0.2.9:53" in got[0].describe()


def test_a_full_ring_loses_events_and_counts_them(pm, maps_dir):
    pm.apply("pod-a", POLICY)
    egress, ingress = pm.load_programs("pod-a")
    raw = pk.build("10.0.0.5", "192.0.2.9", pk.IPPROTO_UDP, dport=53)
    try:
        with events.EventReader(maps_dir) as reader:
            reader.skip_backlog()
            before = reader.lost()
            # 20,000 drops in well under a second on one CPU: the ring (256 KiB, 72-byte events)
            # fills and the per-CPU budget of 5,000 per second runs out.
            assert egress.test_run(raw, repeat=20_000).retval == 2
            lost = reader.lost()
            got = reader.read(timeout=1.0)
            while more := reader.read(timeout=0.1):
                got += more
    finally:
        egress.close()
        ingress.close()
    dropped = sum(lost.values()) - sum(before.values())
    print(f"\nwritten {len(got)}, lost {lost} (before {before})")
    assert got and dropped > 0
    assert len(got) + dropped == 20_000
    assert len(got) <= 5_000
    # The packet's verdict never depends on the events: the counters saw every drop.
    assert pm.counters("pod-a").rule(Direction.EGRESS, 0).packets == 20_000


def _cli(maps_root, *args):
    r = CliRunner().invoke(cli, ["--bpffs-root", maps_root, *args],
                           env={"NKFRAME_PLUGINS": "policy", "NKFRAME_NO_AGENT": "1"})
    return SimpleNamespace(code=r.exit_code, out=r.stdout, err=r.stderr, exc=r.exception)


def test_cli_prints_filters_and_exits_after_count(pm, maps_dir, bpffs_root):
    pm.apply("pod-a", POLICY)
    egress, ingress = pm.load_programs("pod-a")
    try:
        for dport in (53, 53):
            assert egress.test_run(pk.build("10.0.0.5", "192.0.2.9", pk.IPPROTO_UDP, dport=dport)).retval == 2
        assert ingress.test_run(pk.build("2001:db8::7", "fd00::5", pk.IPPROTO_UDP, dport=9)).retval == 2
    finally:
        egress.close()
        ingress.close()
    # Events stay in the ring until read: the CLI sees them, the filter keeps the default drop.
    r = _cli(bpffs_root, "events", "--json", "--reason", "policy_default", "--count", "1",
             "--timeout", "10")
    assert r.code == 0, (r.out, r.err, r.exc)
    lines = [json.loads(line) for line in r.out.splitlines()]
    assert [(d["endpoint"], d["reason"], d["dst"], d["dport"]) for d in lines] == [
        ("pod-a", "policy_default", "fd00::5", 9)]
    # What is left: nothing for another endpoint, and --count cannot be met before --timeout.
    r = _cli(bpffs_root, "events", "--endpoint", "pod-b", "--count", "1", "--timeout", "0.5")
    assert r.code == 1 and r.out == ""
    r = _cli(bpffs_root, "events", "--reason", "bogus", "--timeout", "0")
    assert r.code == 2
    r = _cli(os.path.join(bpffs_root, "elsewhere"), "events", "--timeout", "0")
    assert r.code == 4 and "no event ring" in r.err


def test_real_traffic_from_outside_shows_up(node, bpffs_root):
    """A node with the L3 datapath and a pod whose ingress allows one port: datagrams from the
    outside netns to another port are dropped on the uplink, and the consumer sees each with
    its 5-tuple."""
    import nkframe_l3
    from nkframe.engine import Engine
    from nkframe.netlink import links
    from nkframe.testing import udp_probe
    from nkframe.types import EndpointSpec
    from nkframe_policy import plugin as policy_plugin

    links.add_route("10.232.0.0/16", via="192.0.2.1", netns=node.outside)
    eng = Engine(node.netns, bpffs_root, plugin_objects=[nkframe_l3, policy_plugin],
                 autoload=False, uplink=node.uplink)
    try:
        eng.setup_uplink()
        pod = node.pod()
        eng.add_endpoint(EndpointSpec(
            id="web", netns=pod, addresses=["10.232.0.10/32"],
            options={"policy": {"default_ingress": "deny", "ingress": [
                {"action": "allow", "cidr": "192.0.2.0/24", "proto": "udp", "ports": 8080}]}}))
        with events.EventReader(os.path.join(bpffs_root, "globals", "maps")) as reader:
            reader.skip_backlog()
            assert udp_probe(node.outside, pod, "10.232.0.10", 8080, count=2) == 2
            assert udp_probe(node.outside, pod, "10.232.0.10", 9090, count=3, timeout=0.5) == 0
            got = []
            deadline = time.monotonic() + 5
            while len([e for e in got if e.dport == 9090]) < 3 and time.monotonic() < deadline:
                got += reader.read(timeout=0.5)
        mine = [e for e in got if e.dport == 9090]
        assert len(mine) == 3, got
        for e in mine:
            assert (e.endpoint, e.hook, e.reason, e.proto_name) == ("web", "uplink", "policy_default", "udp")
            assert (str(e.src), str(e.dst)) == ("192.0.2.2", "10.232.0.10") and e.sport
        assert not [e for e in got if e.dport == 8080]
    finally:
        for eid in list(eng.layout.endpoint_ids()):
            eng.remove_endpoint(eid)
        eng.teardown_uplink()
        policy_plugin.forget(bpffs_root)


def test_cli_streams_live_and_exits_after_count(pm, bpffs_root):
    """``nkframe events --count 3`` started before the drops prints them as they happen and
    exits by itself."""
    import subprocess
    import sys

    pm.apply("pod-a", POLICY)
    egress, ingress = pm.load_programs("pod-a")
    exe = os.path.join(os.path.dirname(sys.executable), "nkframe")
    proc = subprocess.Popen([exe, "--bpffs-root", bpffs_root, "events", "--json", "--count", "3",
                             "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "NKFRAME_NO_AGENT": "1"})
    try:
        time.sleep(1.0)  # the consumer is up and waiting
        assert proc.poll() is None
        for sport in (1001, 1002, 1003, 1004):
            raw = pk.build("10.0.0.5", "192.0.2.9", pk.IPPROTO_UDP, sport=sport, dport=53)
            assert egress.test_run(raw).retval == 2
            time.sleep(0.1)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        egress.close()
        ingress.close()
    assert proc.returncode == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert [(d["sport"], d["reason"], d["endpoint"]) for d in docs] == [
        (1001, "policy_deny", "pod-a"), (1002, "policy_deny", "pod-a"), (1003, "policy_deny", "pod-a")]
