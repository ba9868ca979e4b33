"""``nkframe demo``: a whole node in namespaces, proved with real traffic.

Topology (all inside namespaces the demo makes; the machine's own interfaces are never touched)::

    outside netns                 node netns                          pod netns (x3)
    ext0 192.0.2.2/24 ───veth─── up0 192.0.2.1/24   ─ netkit|veth ─   eth0 10.0.1.1x/32
                                  (uplink: TCX/TC ingress program)     fd00:1::1x/128

Policy on pod-b (ingress, default deny): pod-a may connect on TCP 8080, and replies from the
outside are let in; pod-c may not.  Everyone may reach the outside.  Every check is a real TCP
connection or UDP exchange between namespaces; the demo passes only when each observation
matches its expectation.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from typing import Any, Callable

import attrs

from nkframe import netns, pins
from nkframe.netlink import links
from nkframe.testing import tcp_connect, udp_probe
from nkframe.types import EndpointSpec

OUT_V4, NODE_V4 = "192.0.2.2", "192.0.2.1"
OUT_V6, NODE_V6 = "2001:db8:ff::2", "2001:db8:ff::1"
PODS = {
    "pod-a": ("10.0.1.10", "fd00:1::10"),
    "pod-b": ("10.0.1.11", "fd00:1::11"),
    "pod-c": ("10.0.1.12", "fd00:1::12"),
}
POD_NET_V4, POD_NET_V6 = "10.0.1.0/24", "fd00:1::/64"
DEMO_PLUGINS = ["l3", "policy"]


def pod_b_policy() -> dict:
    a4, a6 = PODS["pod-a"]
    return {
        "default_ingress": "deny",
        "default_egress": "allow",
        "ingress": [
            {"action": "allow", "cidr": f"{a4}/32", "proto": "tcp", "ports": 8080},
            {"action": "allow", "cidr": f"{a6}/128", "proto": "tcp", "ports": 8080},
            # The policy is stateless: replies to pod-b's own connections come back as ingress
            # to its ephemeral ports, so they are allowed explicitly (pod-c still can't reach 8080).
            {"action": "allow", "cidr": POD_NET_V4, "proto": "tcp", "ports": "32768-60999"},
            {"action": "allow", "cidr": POD_NET_V6, "proto": "tcp", "ports": "32768-60999"},
            {"action": "allow", "cidr": "192.0.2.0/24"},  # the outside (replies included)
            {"action": "allow", "cidr": "2001:db8:ff::/64"},
        ],
    }


@attrs.frozen
class Check:
    src: str
    dst: str
    proto: str
    port: int
    expected: str
    family: int = 4


def checks() -> list[Check]:
    out = []
    for fam in (4, 6):
        out += [
            Check("pod-a", "pod-b", "tcp", 8080, "delivered", fam),
            Check("pod-c", "pod-b", "tcp", 8080, "dropped", fam),
            Check("pod-a", "pod-b", "udp", 5353, "dropped", fam),
            Check("pod-b", "pod-c", "tcp", 9090, "delivered", fam),
            Check("pod-a", "outside", "tcp", 80, "delivered", fam),
            Check("pod-b", "outside", "tcp", 80, "delivered", fam),
            Check("pod-c", "outside", "udp", 53, "delivered", fam),
            Check("outside", "pod-a", "tcp", 8443, "delivered", fam),
            Check("pod-c", "node", "tcp", 10250, "delivered", fam),
        ]
    return out


class Demo:
    def __init__(self, *, keep: bool = False, attach: str = "auto", log: Callable[[str], None] = lambda s: None):
        tag = uuid.uuid4().hex[:5]
        self.node_ns = f"nkdemo-node-{tag}"
        self.out_ns = f"nkdemo-out-{tag}"
        self.pod_ns = {name: f"nkdemo-{name}-{tag}" for name in PODS}
        self.keep = keep
        self.attach = attach
        self.log = log
        self.bpffs = ""
        self.engine = None

    # -- build
    def build(self) -> None:
        from nkframe.engine import Engine

        for ns in (self.node_ns, self.out_ns, *self.pod_ns.values()):
            netns.create(ns)
        links.create_veth(links.VethSpec(name="up0", peer_name="ext0", peer_netns=self.out_ns), netns=self.node_ns)
        for ns, dev, v4, v6 in ((self.node_ns, "up0", NODE_V4, NODE_V6), (self.out_ns, "ext0", OUT_V4, OUT_V6)):
            links.add_address(dev, f"{v4}/24", netns=ns)
            links.add_address(dev, f"{v6}/64", netns=ns, nodad=True)
            links.set_up("lo", netns=ns)
            links.set_up(dev, netns=ns)
        links.add_route(POD_NET_V4, via=NODE_V4, netns=self.out_ns)
        links.add_route(POD_NET_V6, via=NODE_V6, netns=self.out_ns)
        self.bpffs = tempfile.mkdtemp(prefix="nkdemo-bpffs-")
        pins.mount_bpffs(self.bpffs)
        self.engine = Engine(self.node_ns, self.bpffs, attach=self.attach, plugins=DEMO_PLUGINS, uplink="up0")
        self.log("uplink programs")
        self.engine.setup_uplink()
        for name, (v4, v6) in PODS.items():
            options: dict[str, Any] = {}
            if name == "pod-b":
                options["policy"] = pod_b_policy()
            self.log(f"endpoint {name}")
            self.engine.add_endpoint(EndpointSpec(id=name, netns=self.pod_ns[name], addresses=[f"{v4}/32", f"{v6}/128"], options=options))

    # -- prove
    def addr(self, who: str, family: int) -> tuple[str, str | None]:
        if who == "outside":
            return (OUT_V4 if family == 4 else OUT_V6), self.out_ns
        if who == "node":
            return (NODE_V4 if family == 4 else NODE_V6), self.node_ns
        v4, v6 = PODS[who]
        return (v4 if family == 4 else v6), self.pod_ns[who]

    def observe(self, c: Check) -> str:
        dst_ip, dst_ns = self.addr(c.dst, c.family)
        _src_ip, src_ns = self.addr(c.src, c.family)
        if c.proto == "tcp":
            # 2.5 s covers one SYN retransmission (1 s) should the first be lost to neighbour resolution
            ok = tcp_connect(src_ns, dst_ns, dst_ip, c.port, timeout=2.5)
        else:
            ok = udp_probe(src_ns, dst_ns, dst_ip, c.port, count=2, timeout=0.8) > 0
        return "delivered" if ok else "dropped"

    def counters(self) -> dict:
        """Policy counters of pod-b that moved: drops by reason, packets per rule."""
        policy_plugin = self.engine.pm.get_plugin("policy")  # the demo's Engine loads it
        c = policy_plugin.counters(str(self.engine.layout.root), "pod-b")
        drops = {reason: cnt.packets for reason, cnt in c.drops.items() if cnt.packets}
        rules = {f"{r.direction.value}[{r.index}]": r.packets for r in c.rules if r.packets}
        return {"pod-b": {"drops": drops, "rules": rules}}

    # -- tear down
    def cleanup(self) -> None:
        if self.engine is not None:
            for ep in list(self.engine.layout.endpoint_ids()):
                try:
                    self.engine.remove_endpoint(ep)
                except Exception as e:  # noqa: BLE001 - keep cleaning
                    self.log(f"cleanup {ep}: {e}")
            try:
                self.engine.teardown_uplink()
            except Exception as e:  # noqa: BLE001
                self.log(f"cleanup uplink: {e}")
            policy_plugin = self.engine.pm.get_plugin("policy")
            if policy_plugin is not None:
                policy_plugin.forget(str(self.engine.layout.root))
        for ns in (*self.pod_ns.values(), self.out_ns, self.node_ns):
            netns.delete(ns)
        if self.bpffs:
            try:
                pins.umount(self.bpffs)
            except Exception:  # noqa: BLE001
                pass
            try:
                os.rmdir(self.bpffs)
            except OSError:
                pass


def run(*, keep: bool = False, attach: str = "auto", as_json: bool = False) -> int:
    from rich.console import Console

    console = Console(stderr=as_json, quiet=False)
    interactive = console.is_terminal and not as_json
    demo = Demo(keep=keep, attach=attach, log=(lambda s: console.log(s)) if interactive else (lambda s: None))
    doc: dict[str, Any] = {"passed": False}
    t0 = time.monotonic()
    try:
        demo.build()
        eps = demo.engine.endpoints()
        kinds = sorted({str(e.device_kind) for e in eps})
        doc["device_kind"] = kinds[0] if len(kinds) == 1 else kinds
        doc["attach"] = {e.id: {h: str(m) for h, m in sorted(e.mechanism.items())} for e in eps}
        doc["why"] = _why(demo)
        results = []
        for c in checks():
            obs = demo.observe(c)
            results.append({"src": c.src, "dst": c.dst, "proto": f"{c.proto}/ipv{c.family}", "port": c.port, "expected": c.expected, "observed": obs})
        doc["checks"] = results
        doc["passed"] = all(r["expected"] == r["observed"] for r in results)
        doc["counters"] = demo.counters()
        doc["seconds"] = round(time.monotonic() - t0, 1)
    finally:
        if keep:
            doc["kept"] = {"node": demo.node_ns, "outside": demo.out_ns, "pods": demo.pod_ns, "bpffs": demo.bpffs}
        else:
            demo.cleanup()
    return finish(doc, as_json, console)


def finish(doc: dict, as_json: bool, console) -> int:
    """Print a demo's result document (JSON or the report) and return its exit code."""
    if as_json:
        print(json.dumps(doc))
    else:
        print_report(console, doc)
    return 0 if doc["passed"] else 1


def _why(demo: Demo) -> str:
    from nkframe import probe

    f = probe.features()
    eps = demo.engine.endpoints()
    kinds = {str(e.device_kind) for e in eps}
    mechs = {str(m) for e in eps for m in e.mechanism.values()}
    reason = "netkit supported" if f.supported("netkit") else f"netkit unsupported: {f['netkit'].reason}"
    if "tc" in mechs and not f.supported("tcx"):
        reason += f"; tc: {f['tcx'].reason}"
    return f"{'/'.join(sorted(kinds))} + {'/'.join(sorted(mechs))}: {reason}"


def print_report(console, doc: dict) -> None:
    from rich.table import Table

    console.print(f"[bold]device[/]: {doc.get('device_kind')}")
    for ep, hooks in (doc.get("attach") or {}).items():
        console.print(f"  {ep}: " + ", ".join(f"{h} via {m}" for h, m in hooks.items()))
    console.print(f"[bold]why[/]: {doc.get('why')}")
    t = Table(title="connectivity: expected vs observed")
    for col in ("src", "dst", "proto", "port", "expected", "observed", ""):
        t.add_column(col)
    for r in doc.get("checks", []):
        ok = r["expected"] == r["observed"]
        t.add_row(r["src"], r["dst"], r["proto"], str(r["port"]), r["expected"], r["observed"], "[green]ok[/]" if ok else "[red]MISMATCH[/]")
    console.print(t)
    if doc.get("counters"):
        console.print(f"[bold]policy counters that moved[/]: {json.dumps(doc['counters'])}")
    console.print("[green]PASSED[/]" if doc["passed"] else "[red]FAILED[/]")
    if doc.get("kept"):
        console.print(f"kept: {doc['kept']}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(as_json="--json" in sys.argv))
