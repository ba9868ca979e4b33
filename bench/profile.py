#!/usr/bin/env python3
"""Where the time goes, for the goals docs/benchmarks.md reports as missed (root).

``bench/profile.py [--adds N] [--top K]``: an endpoint add.

Builds a node in namespaces the way the control-plane benchmark does, then adds and removes N
endpoints through the Engine under py-spy (``pip install py-spy``) and prints the frames with
the largest inclusive share of ``Engine.add_endpoint`` / ``remove_endpoint``, plus how many
pyroute2 netlink sockets and requests one add makes.  Counting wraps pyroute2's constructor and
request sender and changes nothing else.  The figures in docs/benchmarks.md's "what limits the
misses" come from this tool.

``bench/profile.py --reconcile --adds N``: a fresh Engine's reconcile over N endpoints (what an
agent does when it starts).

``bench/profile.py --tput CONFIG`` (veth, routing, tcx, tc): ``perf record -a`` while iperf3
sends pod -> outside with four streams (client pinned to CPU 0, as in the benchmark); prints where
CPU 0 (the sender, which also runs every softirq of the path) spends its samples, by layer.

``bench/profile.py --policy N``: the policy program with N rules per direction, run with
BPF_PROG_TEST_RUN in a loop under ``perf record`` (software clock; this machine has no hardware
counters); prints which kernel functions the test-run samples end in.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def child(adds: int, out: str, reconcile: bool = False) -> int:
    """The profiled process: N adds and removes through the Engine, with counters (with
    ``reconcile``: N adds, then a fresh Engine's reconcile is what gets counted)."""
    import pyroute2
    from pyroute2.netlink import nlsocket

    from nkbench.topo import Node, Scope

    counts = collections.Counter()
    init = pyroute2.IPRoute.__init__

    def counting_init(self, *a, **kw):
        counts["sockets"] += 1
        init(self, *a, **kw)

    send = nlsocket.NetlinkRequest.send

    async def counting_send(self, *a, **kw):
        counts["requests"] += 1
        return await send(self, *a, **kw)

    pyroute2.IPRoute.__init__ = counting_init
    nlsocket.NetlinkRequest.send = counting_send
    from nkframe.engine import Engine
    from nkframe.types import EndpointSpec

    with Scope() as scope:
        node = Node(scope, prefix="pf")
        eng = Engine(node.netns, scope.bpffs(), plugins=["l3"], uplink=node.uplink)
        eng.setup_uplink()
        pods = [scope.netns("pfp") for _ in range(adds)]
        counts.clear()
        t0 = time.perf_counter()
        for i, pod in enumerate(pods):
            eng.add_endpoint(EndpointSpec(id=f"pf{i}", netns=pod, addresses=[f"10.1.0.{i + 1}/32"]))
        t1 = time.perf_counter()
        add_counts = dict(counts)
        if reconcile:
            counts.clear()
            t0 = time.perf_counter()
            Engine(node.netns, str(eng.layout.root), plugins=["l3"], uplink=node.uplink).reconcile()
            t1 = time.perf_counter()
            add_counts = dict(counts)
        counts.clear()
        for i in range(adds):
            eng.remove_endpoint(f"pf{i}")
        t2 = time.perf_counter()
        doc = {"adds": adds, "reconcile": reconcile, "add_ms": 1000 * (t1 - t0) / adds, "del_ms": 1000 * (t2 - t1) / adds,
               "per_add": {k: v / adds for k, v in add_counts.items()},
               "per_del": {k: v / adds for k, v in counts.items()}}
    Path(out).write_text(json.dumps(doc))
    return 0


# Where a sample's time goes, by the first of these found from the leaf up.
BUCKETS = (("pyroute2 + asyncio", ("pyroute2/", "asyncio/")), ("libbpf / bpf(2)", ("nkframe/bpf.py", "nkframe/_bpf")),
           ("bpffs pins", ("nkframe/pins.py", "nkframe/specstore.py")), ("netns switch", ("nkframe/netns.py",)))


def buckets(raw: str, within: str) -> list[tuple[float, str]]:
    got: collections.Counter = collections.Counter()
    total = 0
    for line in open(raw):
        stack, _, n = line.rstrip().rpartition(" ")
        frames = stack.split(";")
        if not any(within in f for f in frames):
            continue
        total += int(n)
        for f in reversed(frames):
            hit = next((name for name, keys in BUCKETS if any(k in f for k in keys)), None)
            if hit:
                got[hit] += int(n)
                break
        else:
            got["other"] += int(n)
    return [(100.0 * v / max(total, 1), k) for k, v in got.most_common()]


def policy_child(rules: int, seconds: float) -> int:
    import random

    from nkframe import pins
    from nkframe_policy.maps import PolicyMaps
    from nkframe_policy.strategies import bench_policy

    from nkbench.perpacket import packet

    d = tempfile.mkdtemp(prefix="nkbench-bpffs-")
    pins.mount_bpffs(d)
    try:
        with PolicyMaps(os.path.join(d, "p")) as pm:
            pol = bench_policy(rules, seed=7)
            pm.apply("prof", pol)
            egress, ingress = pm.load_programs("prof")
            r4 = random.Random(rules).choice([r for r in pol.egress if r.version == 4])
            data = packet("10.1.1.1", str(r4.cidr.network_address))
            ns = min(egress.test_run(data, repeat=100_000).duration_ns for _ in range(5))
            print(f"policy_egress, {rules} rules per direction, {len(pol.egress)} egress: {ns} ns per run", flush=True)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                egress.test_run(data, repeat=1_000_000)
            egress.close()
            ingress.close()
            pm.remove("prof")
    finally:
        pins.umount(d)
        os.rmdir(d)
    return 0


def perf_leaves(data: str, within: str = "bpf_test_run") -> list[tuple[float, str]]:
    out = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym"], capture_output=True, text=True).stdout
    stacks, cur = [], None
    for line in out.splitlines():
        if not line.strip():
            if cur:
                stacks.append(cur)
            cur = None
            continue
        if cur is None:
            cur = []
        parts = line.split(None, 1)
        cur.append(parts[1].strip() if len(parts) > 1 else "?")
    if cur:
        stacks.append(cur)
    inside = [s for s in stacks if any(f.startswith(within) for f in s)]
    leaves = collections.Counter(re.sub(r"^bpf_prog_[0-9a-f]+_", "bpf_prog_", s[0]) for s in inside)
    return [(100.0 * v / max(len(inside), 1), k) for k, v in leaves.most_common(8)]


def profile_policy(rules: int) -> int:
    if not shutil.which("perf"):
        print("no perf (apt-get install linux-perf)", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="nkbench-profile-")
    try:
        data = os.path.join(tmp, "perf.data")
        subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "5000", "-g", "-o", data, "--",
                        sys.executable, __file__, "--policy-child", str(rules)], check=True)
        print("test-run samples by the function they end in:")
        for share, sym in perf_leaves(data):
            print(f"  {share:5.1f}%  {sym}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


# Kernel symbols by layer of the forwarding path (first match wins).
TPUT_GROUPS = (
    ("copies user <-> skb", r"copy_(from|to)_iter|memcpy|csum_partial"),
    ("nkframe BPF (program + helpers)", r"^bpf_prog_|^bpf_(ipv4|ipv6)_fib|^bpf_redirect|^bpf_skb|skb_do_redirect|^tcx_|sch_handle_ingress|tcf_classify|cls_bpf"),
    ("node IP stack (rcv, route, forward, output)", r"^ip6?_(forward|rcv|route|finish|output|sublist|list|local|skb_dst)|^ip_rcv|fib6?_|^ipv4_|nf_hook|^__mkroute|^rt_|^dst_|neigh_"),
    ("TCP", r"^tcp_|^__tcp"),
    ("devices (veth, backlog, GRO)", r"veth|netif|napi|^__dev_queue|^dev_hard|process_backlog|gro_|__dev_"),
)


def profile_tput(config: str) -> int:
    from nkbench import throughput as T
    from nkbench.topo import Scope, in_netns

    tmp = tempfile.mkdtemp(prefix="nkbench-profile-")
    data = os.path.join(tmp, "perf.data")
    try:
        with Scope() as scope:
            topo = {"veth": lambda: T.build_veth(scope), "routing": lambda: T.build_routing(scope)}.get(
                config, lambda: T.build_nkframe(scope, config))()
            topo.ends.pop("_what", None)
            cli, srv, ip = topo.ends["one-hop" if config == "veth" else "pod-out"]
            T.Servers(scope).ensure(srv)
            p = subprocess.Popen(in_netns(cli, *T.PIN_CLIENT, "iperf3", "-c", ip, "-p", str(T.PORT), "-t", "8", "-P", "4", "-J"),
                                 stdout=subprocess.PIPE, text=True)
            time.sleep(2)
            subprocess.run(["perf", "record", "-q", "-a", "-e", "cpu-clock", "-F", "4000", "-o", data, "--", "sleep", "4"], check=True)
            out, _ = p.communicate(timeout=60)
            print(f"{config}: {json.loads(out)['end']['sum_received']['bits_per_second'] / 1e9:.1f} Gbit/s pod -> outside, 4 streams")
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "sym", "--cpu", "0"],
                             capture_output=True, text=True).stdout
        rows = []
        for line in rep.splitlines():
            m = re.match(r"\s*([\d.]+)%\s+\[.\]\s+(\S+)", line)
            if m:
                rows.append((float(m.group(1)), m.group(2)))
        got = collections.Counter()
        for pct, sym in rows:
            group = next((g for g, pat in TPUT_GROUPS if re.search(pat, sym)), "other")
            got[group] += pct
        print("CPU 0 samples by layer:")
        for g, _ in TPUT_GROUPS + (("other", ""),):
            print(f"  {got[g]:5.1f}%  {g}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def micro(n: int = 200) -> dict[str, float]:
    """ms per netlink operation: a pyroute2 session, a pyroute2 ``link get``, and the same
    RTM_GETLINK on a raw netlink socket (socket created and closed each time)."""
    import socket
    import struct

    from pyroute2 import IPRoute

    out = {}
    t = time.perf_counter()
    for _ in range(n):
        IPRoute(ext_ack=True, strict_check=True).close()
    out["pyroute2 IPRoute() + close"] = (time.perf_counter() - t) / n * 1000
    with IPRoute(ext_ack=True, strict_check=True) as ipr:
        t = time.perf_counter()
        for _ in range(n):
            ipr.link("get", ifname="lo")
        out["pyroute2 link('get', ifname='lo')"] = (time.perf_counter() - t) / n * 1000
    name = b"lo\0\0"
    req = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0) + struct.pack("=HH", 4 + 3, 3) + name  # IFLA_IFNAME
    msg = struct.pack("=IHHII", 16 + len(req), 18, 1, 1, 0) + req  # RTM_GETLINK, NLM_F_REQUEST
    t = time.perf_counter()
    for _ in range(n):
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
            s.send(msg)
            s.recv(65536)
    out["raw socket + RTM_GETLINK lo"] = (time.perf_counter() - t) / n * 1000
    return out


def aggregate(raw: str, within: str, top: int) -> list[tuple[float, str]]:
    inc: collections.Counter = collections.Counter()
    total = 0
    for line in open(raw):
        stack, _, n = line.rstrip().rpartition(" ")
        frames = stack.split(";")
        if not any(within in f for f in frames):
            continue
        total += int(n)
        seen = set()
        for f in frames[[i for i, f in enumerate(frames) if within in f][0]:]:
            f = re.sub(r":\d+\)$", ")", f)
            if f not in seen:
                seen.add(f)
                inc[f] += int(n)
    return [(100.0 * v / max(total, 1), f) for f, v in inc.most_common(top)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adds", type=int, default=40)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--reconcile", action="store_true", help="profile a fresh Engine's reconcile over --adds endpoints")
    p.add_argument("--tput", choices=("veth", "routing", "tcx", "tc"), default=None, help="profile pod -> outside throughput instead")
    p.add_argument("--policy", type=int, default=None, metavar="N", help="profile the policy program with N rules instead")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--policy-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.adds, args.child, args.reconcile)
    if args.policy_child:
        return policy_child(args.policy_child, 4.0)
    if os.geteuid() != 0:
        print("profile needs root", file=sys.stderr)
        return 2
    if args.policy:
        return profile_policy(args.policy)
    if args.tput:
        return profile_tput(args.tput)
    tmp = tempfile.mkdtemp(prefix="nkbench-profile-")
    try:
        out, raw = os.path.join(tmp, "counts.json"), os.path.join(tmp, "stacks.txt")
        cmd = [sys.executable, __file__, "--adds", str(args.adds), "--child", out] + (["--reconcile"] if args.reconcile else [])
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        # --nonblocking: py-spy must not stop the process to sample it; a stop leaves a signal
        # pending, and the verifier gives up a BPF_PROG_LOAD with EAGAIN when it sees one.
        if os.access(spy, os.X_OK):
            subprocess.run([spy, "record", "--nonblocking", "-r", "250", "--format", "raw", "-o", raw, "--", *cmd], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            print("no py-spy: counts only (pip install py-spy)", file=sys.stderr)
            subprocess.run(cmd, check=True)
        doc = json.loads(Path(out).read_text())
        if doc["reconcile"]:
            print(f"reconcile of {doc['adds']} endpoints: {doc['add_ms']:.1f} ms per endpoint")
        else:
            print(f"{doc['adds']} adds: {doc['add_ms']:.1f} ms each, removes {doc['del_ms']:.1f} ms each")
        print(f"per {'endpoint reconciled' if doc['reconcile'] else 'add'}:    {doc['per_add'].get('sockets', 0):.1f} pyroute2 sockets, {doc['per_add'].get('requests', 0):.1f} netlink requests")
        print(f"per remove: {doc['per_del'].get('sockets', 0):.1f} pyroute2 sockets, {doc['per_del'].get('requests', 0):.1f} netlink requests")
        print("\nms per netlink operation (this process, 200 each):")
        for k, v in micro().items():
            print(f"  {v:7.3f} ms  {k}")
        if os.path.exists(raw):
            for within in (("Engine.reconcile",) if args.reconcile else ("Engine.add_endpoint", "Engine.remove_endpoint")):
                print(f"\n{within}, by layer (innermost match): " + ", ".join(f"{k} {v:.0f}%" for v, k in buckets(raw, within)))
                print(f"inclusive share of {within} (py-spy samples):")
                for share, frame in aggregate(raw, within, args.top):
                    print(f"  {share:5.1f}%  {frame}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
