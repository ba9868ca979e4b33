#!/usr/bin/env python3
"""Where an endpoint add spends its time (root): ``bench/profile.py [--adds N] [--top K]``.

Builds a node in namespaces the way the control-plane benchmark does, then adds and removes N
endpoints through the Engine under py-spy (``pip install py-spy``) and prints the frames with
the largest inclusive share of ``Engine.add_endpoint`` / ``remove_endpoint``, plus how many
pyroute2 netlink sockets and requests one add makes.  Counting wraps pyroute2's constructor and
request sender and changes nothing else.  The figures in docs/benchmarks.md's "what limits the
misses" come from this tool.
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


def child(adds: int, out: str) -> int:
    """The profiled process: N adds and removes through the Engine, with counters."""
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
        counts.clear()
        for i in range(adds):
            eng.remove_endpoint(f"pf{i}")
        t2 = time.perf_counter()
        doc = {"adds": adds, "add_ms": 1000 * (t1 - t0) / adds, "del_ms": 1000 * (t2 - t1) / adds,
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
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.adds, args.child)
    if os.geteuid() != 0:
        print("profile needs root", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="nkbench-profile-")
    try:
        out, raw = os.path.join(tmp, "counts.json"), os.path.join(tmp, "stacks.txt")
        cmd = [sys.executable, __file__, "--adds", str(args.adds), "--child", out]
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if os.access(spy, os.X_OK):
            subprocess.run([spy, "record", "-r", "250", "--format", "raw", "-o", raw, "--", *cmd], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            print("no py-spy: counts only (pip install py-spy)", file=sys.stderr)
            subprocess.run(cmd, check=True)
        doc = json.loads(Path(out).read_text())
        print(f"{doc['adds']} adds: {doc['add_ms']:.1f} ms each, removes {doc['del_ms']:.1f} ms each")
        print(f"per add:    {doc['per_add'].get('sockets', 0):.1f} pyroute2 sockets, {doc['per_add'].get('requests', 0):.1f} netlink requests")
        print(f"per remove: {doc['per_del'].get('sockets', 0):.1f} pyroute2 sockets, {doc['per_del'].get('requests', 0):.1f} netlink requests")
        print("\nms per netlink operation (this process, 200 each):")
        for k, v in micro().items():
            print(f"  {v:7.3f} ms  {k}")
        if os.path.exists(raw):
            for within in ("Engine.add_endpoint", "Engine.remove_endpoint"):
                print(f"\n{within}, by layer (innermost match): " + ", ".join(f"{k} {v:.0f}%" for v, k in buckets(raw, within)))
                print(f"inclusive share of {within} (py-spy samples):")
                for share, frame in aggregate(raw, within, args.top):
                    print(f"  {share:5.1f}%  {frame}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
