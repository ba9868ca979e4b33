"""Pods across nodes (issue 18): a simulated three-node cluster on one machine.

Each node is a network namespace with its own agent (``nkframe agent run`` as a process), its own
bpffs root and an uplink veth into a shared "fabric" namespace (a bridge).  Pod CIDRs are per
node and the nodes route each other's CIDRs through the fabric: native routing, no overlay, as
docs/architecture.md says nkframe expects (the cluster installs those routes, nkframe does not).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from nkframe.agent.client import AgentClient
from nkframe.netlink import links
from nkframe.testing import tcp_connect, udp_probe
from nkframe.types import EndpointSpec

pytestmark = pytest.mark.root

NODES = (1, 2, 3)


def _pod4(n: int) -> str:
    return f"10.82.{n}.10"


def _pod6(n: int) -> str:
    return f"fd00:82:{n}::10"


class Cluster:
    def __init__(self, make_netns, bpffs, tmp_path):
        self.fabric = make_netns("fab")
        links.set_up("lo", netns=self.fabric)
        subprocess.run(["ip", "-n", self.fabric, "link", "add", "br0", "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", self.fabric, "link", "set", "br0", "up"], check=True)
        self.node, self.root, self.sock, self.agent, self.pod = {}, {}, {}, {}, {}
        for n in NODES:
            ns = self.node[n] = make_netns(f"n{n}")
            links.set_up("lo", netns=ns)
            links.create_veth(links.VethSpec(name="up0", peer_name=f"fab{n}", peer_netns=self.fabric), netns=ns)
            subprocess.run(["ip", "-n", self.fabric, "link", "set", f"fab{n}", "master", "br0", "up"], check=True)
            links.add_address("up0", f"192.0.2.{n}/24", netns=ns)
            links.add_address("up0", f"2001:db8:82::{n}/64", netns=ns, nodad=True)
            links.set_up("up0", netns=ns)
            self.root[n] = os.path.join(bpffs, f"n{n}-{os.urandom(3).hex()}")
            self.sock[n] = str(tmp_path / f"agent{n}.sock")
            self.pod[n] = make_netns(f"p{n}")
        for n in NODES:  # the cluster's routes: every other node's pod CIDRs via that node
            for m in NODES:
                if m != n:
                    links.add_route(f"10.82.{m}.0/24", via=f"192.0.2.{m}", netns=self.node[n])
                    links.add_route(f"fd00:82:{m}::/64", via=f"2001:db8:82::{m}", netns=self.node[n])
            self.start(n)

    def start(self, n: int) -> None:
        self.agent[n] = subprocess.Popen(
            [sys.executable, "-m", "nkframe.cli", "--netns", self.node[n], "--bpffs-root", self.root[n], "agent", "run",
             "--socket", self.sock[n], "--plugin", "l3", "--plugin", "policy", "--uplink", "up0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.sock[n]):
            assert self.agent[n].poll() is None, self.agent[n].stdout.read()
            assert time.monotonic() < deadline, f"node {n}'s agent did not start"
            time.sleep(0.1)

    def stop(self, n: int) -> None:
        p = self.agent.pop(n, None)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(30)

    def client(self, n: int) -> AgentClient:
        return AgentClient(self.sock[n], node_netns=self.node[n], bpffs_root=self.root[n])

    def add_pod(self, n: int, policy: dict | None = None) -> None:
        spec = EndpointSpec(id=f"pod{n}", netns=self.pod[n], addresses=[f"{_pod4(n)}/32", f"{_pod6(n)}/128"],
                            options={"policy": policy} if policy else {})
        with self.client(n) as c:
            c.add_endpoint(spec)

    def teardown(self) -> None:
        for n in NODES:
            if n not in self.agent:
                self.start(n)
            try:
                with self.client(n) as c:
                    for ep in c.endpoints():
                        c.remove_endpoint(ep.spec.id)
            finally:
                self.stop(n)
            subprocess.run([sys.executable, "-m", "nkframe.cli", "--netns", self.node[n], "--bpffs-root", self.root[n],
                            "--no-agent", "node", "reset"], capture_output=True, timeout=120)


@pytest.fixture
def cluster(make_netns, bpffs, tmp_path):
    c = Cluster(make_netns, bpffs, tmp_path)
    try:
        yield c
    finally:
        c.teardown()


def _udp(c: Cluster, src: int, dst: int, v6: bool = False, port: int = 7300) -> int:
    return udp_probe(c.pod[src], c.pod[dst], _pod6(dst) if v6 else _pod4(dst), port, count=3)


def test_pods_on_different_nodes_reach_each_other(cluster):
    for n in NODES:
        cluster.add_pod(n)
    for src in NODES:
        for dst in NODES:
            if src == dst:
                continue
            for v6 in (False, True):
                assert _udp(cluster, src, dst, v6) == 3, f"UDP pod{src} -> pod{dst} ({'v6' if v6 else 'v4'})"
            assert tcp_connect(cluster.pod[src], cluster.pod[dst], _pod4(dst), 7400, timeout=3)
            assert tcp_connect(cluster.pod[src], cluster.pod[dst], _pod6(dst), 7401, timeout=3)


def test_policy_judges_cross_node_traffic_on_both_sides(cluster):
    """pod3 admits UDP 7300 from node 1's pods only (its ingress, on node 3); pod1 may not send
    to node 2's pods at all (its egress, on node 1)."""
    cluster.add_pod(1, policy={"egress": [{"action": "deny", "cidr": "10.82.2.0/24"}]})
    cluster.add_pod(2)
    cluster.add_pod(3, policy={"default_ingress": "deny",
                               "ingress": [{"action": "allow", "cidr": "10.82.1.0/24", "proto": "udp", "ports": 7300}]})
    assert _udp(cluster, 1, 3) == 3, "allowed by pod3's ingress rule"
    assert _udp(cluster, 2, 3) == 0, "pod3's default ingress deny, judged on node 3"
    assert _udp(cluster, 1, 3, port=7301) == 0, "another port: denied"
    assert _udp(cluster, 1, 2) == 0, "pod1's egress deny, judged on node 1"
    assert _udp(cluster, 2, 1) == 3, "the reverse direction is not pod1's egress"


def test_a_nodes_agent_going_away_leaves_the_others_working(cluster):
    for n in NODES:
        cluster.add_pod(n)
    cluster.stop(2)
    assert _udp(cluster, 1, 3) == 3 and _udp(cluster, 3, 1) == 3
    # node 2's pod keeps its pinned datapath without an agent, too
    assert _udp(cluster, 1, 2) == 3 and _udp(cluster, 2, 3) == 3
    cluster.start(2)
    with cluster.client(2) as c:
        assert [e.spec.id for e in c.endpoints()] == ["pod2"]
    assert _udp(cluster, 2, 1) == 3
