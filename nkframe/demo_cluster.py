"""``nkframe demo --nodes N``: N nodes in namespaces, pods on each, proved with real traffic.

Topology (namespaces the demo makes and removes; the machine's interfaces are never touched)::

    fabric netns: bridge br0 ── veth ── node<i> netns: up0 192.0.2.<i>/24, 2001:db8:82::<i>/64
                                        pod<i> netns:   eth0 10.82.<i>.10/32, fd00:82:<i>::10/128

Each node has its own Engine and bpffs root; nodes route each other's pod CIDRs through the
fabric (native routing, installed here as the cluster would: see docs/architecture.md, "Between
nodes").  The last node's pod admits UDP 7300 from the first node's pods only (and replies to its own
TCP connections: the policy is stateless); every other pair talks freely.  The demo passes only when every observation matches its expectation.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from typing import Any

from nkframe import netns, pins
from nkframe.netlink import links
from nkframe.testing import tcp_connect, udp_probe
from nkframe.types import EndpointSpec

PLUGINS = ["l3", "policy"]


def _pod(i: int, v6: bool) -> str:
    return f"fd00:82:{i}::10" if v6 else f"10.82.{i}.10"


class ClusterDemo:
    def __init__(self, nodes: int, attach: str = "auto"):
        if not 2 <= nodes <= 8:
            from nkframe.errors import InvalidSpec

            raise InvalidSpec(f"--nodes {nodes}: between 2 and 8 nodes")
        self.n = nodes
        self.attach = attach
        tag = uuid.uuid4().hex[:6]
        self.fabric = f"nkd-fab-{tag}"
        self.node = {i: f"nkd-n{i}-{tag}" for i in range(1, nodes + 1)}
        self.pod = {i: f"nkd-p{i}-{tag}" for i in range(1, nodes + 1)}
        self.made: list[str] = []
        self.bpffs: str | None = None
        self.engines: dict = {}

    def build(self) -> None:
        from nkframe.engine import Engine

        for name in (self.fabric, *self.node.values(), *self.pod.values()):
            netns.create(name)
            self.made.append(name)
            links.set_up("lo", netns=name)
        subprocess.run(["ip", "-n", self.fabric, "link", "add", "br0", "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", self.fabric, "link", "set", "br0", "up"], check=True)
        self.bpffs = tempfile.mkdtemp(prefix="nkd-bpffs-")
        pins.mount_bpffs(self.bpffs)
        for i, ns in self.node.items():
            links.create_veth(links.VethSpec(name="up0", peer_name=f"fab{i}", peer_netns=self.fabric), netns=ns)
            subprocess.run(["ip", "-n", self.fabric, "link", "set", f"fab{i}", "master", "br0", "up"], check=True)
            links.add_address("up0", f"192.0.2.{i}/24", netns=ns)
            links.add_address("up0", f"2001:db8:82::{i}/64", netns=ns, nodad=True)
            links.set_up("up0", netns=ns)
        for i, ns in self.node.items():
            for j in self.node:
                if j != i:
                    links.add_route(f"10.82.{j}.0/24", via=f"192.0.2.{j}", netns=ns)
                    links.add_route(f"fd00:82:{j}::/64", via=f"2001:db8:82::{j}", netns=ns)
            eng = self.engines[i] = Engine(ns, os.path.join(self.bpffs, f"node{i}"), attach=self.attach,
                                           plugins=PLUGINS, uplink="up0")
            eng.setup_uplink()
            policy = None
            if i == self.n:
                policy = {"default_ingress": "deny",
                          "ingress": [{"action": "allow", "cidr": "10.82.1.0/24", "proto": "udp", "ports": 7300},
                                      {"action": "allow", "cidr": "fd00:82:1::/64", "proto": "udp", "ports": 7300},
                                      # stateless: replies to pod<n>'s own connections are ingress
                                      {"action": "allow", "cidr": "10.82.0.0/16", "proto": "tcp", "ports": "32768-60999"},
                                      {"action": "allow", "cidr": "fd00:82::/32", "proto": "tcp", "ports": "32768-60999"}]}
            eng.add_endpoint(EndpointSpec(id=f"pod{i}", netns=self.pod[i], addresses=[f"{_pod(i, False)}/32", f"{_pod(i, True)}/128"],
                                          options={"policy": policy} if policy else {}))

    def checks(self) -> list[dict]:
        out = []
        last = self.n
        for src in self.node:
            for dst in self.node:
                if src == dst:
                    continue
                for v6 in (False, True):
                    if dst == last:
                        expected = "delivered" if src == 1 else "dropped"
                        got = udp_probe(self.pod[src], self.pod[dst], _pod(dst, v6), 7300, count=2, timeout=0.8) > 0
                        proto, port = "udp", 7300
                    else:
                        expected = "delivered"
                        got = tcp_connect(self.pod[src], self.pod[dst], _pod(dst, v6), 7400, timeout=2.5)
                        proto, port = "tcp", 7400
                    out.append({"src": f"pod{src}@node{src}", "dst": f"pod{dst}@node{dst}", "proto": f"{proto}/ipv{6 if v6 else 4}",
                                "port": port, "expected": expected, "observed": "delivered" if got else "dropped"})
        return out

    def cleanup(self) -> None:
        for i, eng in self.engines.items():
            try:
                eng.reset_node()
            except Exception:  # noqa: BLE001 - keep cleaning
                pass
        for name in reversed(self.made):
            netns.delete(name)
        if self.bpffs:
            try:
                pins.umount(self.bpffs)
                os.rmdir(self.bpffs)
            except OSError:
                pass


def run(nodes: int, *, attach: str = "auto", as_json: bool = False) -> int:
    from rich.console import Console

    from nkframe.demo import finish

    console = Console(stderr=as_json)
    demo = ClusterDemo(nodes, attach)
    doc: dict[str, Any] = {"passed": False, "nodes": nodes}
    t0 = time.monotonic()
    try:
        demo.build()
        doc["attach"] = {f"pod{i}@node{i}": {h: str(m) for h, m in sorted(e.mechanism.items())}
                         for i, eng in demo.engines.items() for e in eng.endpoints()}
        doc["device_kind"] = sorted({str(e.device_kind) for eng in demo.engines.values() for e in eng.endpoints()})
        doc["why"] = (f"{nodes} nodes, an Engine and bpffs root each, native routes between pod CIDRs; "
                      f"pod{nodes} admits UDP 7300 from node 1's pods only")
        doc["checks"] = demo.checks()
        doc["passed"] = all(c["expected"] == c["observed"] for c in doc["checks"])
        doc["seconds"] = round(time.monotonic() - t0, 1)
    finally:
        demo.cleanup()
    return finish(doc, as_json, console)
