"""Throughput with iperf3 (TCP, one stream and four): pod -> pod, pod -> outside, outside -> pod.

Configurations, all built side by side in their own namespaces and measured round-robin (every
round runs every case once, so drift hits all alike):

* ``veth``: one veth between two namespaces, nothing else: the machine's limit for one hop.
* ``routing``: the kernel routing through the node with no BPF, built by the ``ptp`` CNI plugin
  with host-local IPAM (a veth per pod, host routes in the node): what ptp gives.
* ``tcx`` / ``tc``: nkframe's L3 datapath (Engine with the ``l3`` plugin, uplink program
  attached) with every program attached through TCX, or through tc clsact/cls_bpf.

A run is one iperf3 test (``-t DURATION -O 1``: the first second is left out, slow start); the
receiver's rate counts.  The figure is the median of ROUNDS runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import attrs

from nkbench.core import Recorder, Stat
from nkbench.topo import OUT_V4, Node, Scope, cni_invoke, have_cni, in_netns, ptp_config, veth_pair, wait_for

PORT = 5201
# Client on CPU 0, server on CPU 1 (when there are two): the same placement for every case,
# instead of whatever the scheduler picks run by run.
PIN_CLIENT = ("taskset", "-c", "0") if (os.cpu_count() or 1) >= 2 else ()
PIN_SERVER = ("taskset", "-c", "1") if (os.cpu_count() or 1) >= 2 else ()


@attrs.frozen
class Sizes:
    rounds: int = 3
    duration: int = 3
    streams: tuple[int, ...] = (1, 4)
    configs: tuple[str, ...] = ("routing", "tcx", "tc")
    directions: tuple[str, ...] = ("pod-pod", "pod-out", "out-pod")


QUICK = Sizes(rounds=1, duration=1, streams=(1,), configs=("routing", "tcx"), directions=("pod-out",))


@attrs.define
class Topology:
    """Where a case's client and server run: netns and the server's address, per direction."""

    name: str
    ends: dict  # direction -> (client netns, server netns, server ip)


class Servers:
    """One iperf3 server per server namespace, for the whole section."""

    def __init__(self, scope: Scope):
        self.scope = scope
        self.started: set[str] = set()

    def ensure(self, ns: str) -> None:
        if ns in self.started:
            return
        self.scope.popen(in_netns(ns, *PIN_SERVER, "iperf3", "-s", "-p", str(PORT), "--idle-timeout", "20"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def listening() -> bool:
            r = subprocess.run(in_netns(ns, "ss", "-Hltn", f"sport = :{PORT}"), capture_output=True, text=True)
            return bool(r.stdout.strip())

        wait_for(listening, 10, f"iperf3 server in {ns}")
        self.started.add(ns)


def iperf(client_ns: str, server_ip: str, *, streams: int, duration: int) -> float:
    """One iperf3 test; Gbit/s received.  Retries a refused start (the server finishing the
    previous test) and a test that hangs."""
    argv = in_netns(client_ns, *PIN_CLIENT, "iperf3", "-c", server_ip, "-p", str(PORT), "-t", str(duration), "-O", "1",
                    "-P", str(streams), "-J", "--connect-timeout", "5000")
    last = ""
    for _attempt in range(3):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
        except subprocess.TimeoutExpired:
            # A test that never finished (seen once in ~200): the server's --idle-timeout
            # resets it; try again after that.
            last = f"no result within {duration + 30} s"
            time.sleep(21)
            continue
        try:
            doc = json.loads(r.stdout)
        except json.JSONDecodeError:
            doc = {"error": r.stderr.strip() or r.stdout.strip()[:200]}
        if "error" not in doc:
            return doc["end"]["sum_received"]["bits_per_second"] / 1e9
        last = doc["error"]
        time.sleep(0.5)
    raise RuntimeError(f"iperf3 {client_ns} -> {server_ip}: {last}")


def build_veth(scope: Scope) -> Topology:
    a, b = veth_pair(scope)
    return Topology("veth", {"one-hop": (a, b, "198.18.0.2")})


def build_routing(scope: Scope) -> Topology:
    """Two pods and an outside host through ptp's veths and the node's routing table."""
    node = Node(scope, pod_nets=["10.77.0.0/16"], prefix="nr")
    conf = ptp_config(scope.tmpdir("nkbench-ipam-"))
    ips = []
    pods = [node.pod("rp"), node.pod("rp")]
    for i, pod in enumerate(pods):
        res = cni_invoke("ADD", conf, container_id=f"nkbench-tput-{i}", pod_netns=pod, node_netns=node.netns)
        scope.defer(f"ptp DEL {pod}", lambda i=i, pod=pod: cni_invoke("DEL", conf, container_id=f"nkbench-tput-{i}", pod_netns=pod, node_netns=node.netns))
        ips.append(res["ips"][0]["address"].split("/")[0])
    return Topology("routing", _ends(node, pods, ips))


def build_nkframe(scope: Scope, attach: str, *, device: str = "auto", name: str | None = None) -> Topology:
    from nkframe.engine import Engine
    from nkframe.types import EndpointSpec

    node = Node(scope, pod_nets=["10.1.0.0/16"], prefix="nk")
    eng = Engine(node.netns, scope.bpffs(), attach=attach, plugins=["l3"], uplink=node.uplink)
    eng.setup_uplink()
    scope.defer("uplink programs", eng.teardown_uplink)
    pods, ips = [node.pod("kp"), node.pod("kp")], ["10.1.0.10", "10.1.0.11"]
    for i, (pod, ip) in enumerate(zip(pods, ips)):
        eng.add_endpoint(EndpointSpec(id=f"tp{i}", netns=pod, addresses=[f"{ip}/32"], device=device))
        scope.defer(f"endpoint tp{i}", lambda i=i: eng.remove_endpoint(f"tp{i}"))
    ep = eng.get_endpoint("tp0")
    topo = Topology(name or attach, _ends(node, pods, ips))
    topo.ends["_what"] = f"{ep.device_kind} + {'/'.join(sorted({str(m) for m in ep.mechanism.values()}))}"
    return topo


def _ends(node: Node, pods: list[str], ips: list[str]) -> dict:
    return {
        "pod-pod": (pods[0], pods[1], ips[1]),
        "pod-out": (pods[0], node.outside, OUT_V4),
        "out-pod": (node.outside, pods[0], ips[0]),
    }


def measure(rec: Recorder, scope: Scope, topos: list[Topology], sizes: Sizes, prefix: str = "tput") -> dict:
    """Round-robin every (topology, direction, streams) case; returns name -> Stat."""
    servers = Servers(scope)
    cases = []
    for t in topos:
        for direction, ends in t.ends.items():
            if direction.startswith("_") or (direction != "one-hop" and direction not in sizes.directions):
                continue
            for s in sizes.streams:
                cases.append((t.name, direction, s, ends))
    for _, _, _, (_c, srv_ns, _ip) in cases:
        servers.ensure(srv_ns)
    runs: dict[str, list[float]] = {}
    for r in range(sizes.rounds):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for tname, direction, s, (cli_ns, _srv, ip) in order:
            key = f"{prefix}.veth.p{s}" if direction == "one-hop" else f"{prefix}.{direction}.p{s}.{tname}"
            g = iperf(cli_ns, ip, streams=s, duration=sizes.duration)
            runs.setdefault(key, []).append(g)
        rec.log(f"throughput round {r + 1}/{sizes.rounds} done ({len(cases)} tests)")
    return {k: Stat.of(v) for k, v in runs.items()}


def run(rec: Recorder, scope: Scope, *, quick: bool = False, sizes: Sizes | None = None) -> None:
    sizes = sizes or (QUICK if quick else Sizes())
    rec.section = "throughput"
    n = (1 + len(sizes.configs) * len(sizes.directions)) * len(sizes.streams) * sizes.rounds
    rec.log(f"throughput: {n} iperf3 tests of {sizes.duration + 1} s")
    topos = [build_veth(scope)]
    for c in sizes.configs:
        if c == "routing":
            if not have_cni("ptp"):
                rec.skip("tput.*.routing", "no ptp CNI plugin (apt-get install containernetworking-plugins)")
                continue
            topos.append(build_routing(scope))
        else:
            topos.append(build_nkframe(scope, c))
    for t in topos:
        if "_what" in t.ends:
            rec.log(f"{t.name}: {t.ends['_what']}")
    stats = measure(rec, scope, topos, sizes)
    for s in sizes.streams:
        veth = rec.add(f"tput.veth.p{s}", stats[f"tput.veth.p{s}"], "Gbit/s", better="higher")
        for d in sizes.directions:
            routing = None
            if f"tput.{d}.p{s}.routing" in stats:
                routing = rec.add(f"tput.{d}.p{s}.routing", stats[f"tput.{d}.p{s}.routing"], "Gbit/s", baseline=veth, better="higher")
            for c in sizes.configs:
                if c == "routing":
                    continue
                st = stats[f"tput.{d}.p{s}.{c}"]
                rec.add(f"tput.{d}.p{s}.{c}", st, "Gbit/s", baseline=routing or veth, better="higher")
                if routing is not None:
                    rec.add(f"tput.{d}.p{s}.{c}.vs-veth", st, "Gbit/s", baseline=veth, better="higher")
