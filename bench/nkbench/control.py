"""Control plane: endpoint add/remove latency through the Engine API, the agent API and (when it
exists) nkframe's CNI plugin, beside the reference ``ptp`` CNI plugin with ``host-local`` IPAM
invoked the way a runtime invokes it; then 1,000 endpoints on one node through the agent: total
time, agent RSS, and the reconcile after an agent restart.

Rounds are interleaved (ptp, engine, agent, ptp, engine, agent, ...) so drift on the machine
hits every front end alike.  Each round measures every operation's own latency; a round's p50
and p99 are one run, and the figure is the median of the runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import attrs

from nkbench.core import Figure, Recorder, Stat, percentile
from nkbench.topo import Node, Scope, cni_invoke, have_cni, ptp_config, wait_for


@attrs.frozen
class Sizes:
    rounds: int = 3  # repeated runs behind each latency figure
    seq: int = 30  # endpoints per sequential round
    conc: int = 48  # endpoints per concurrent round
    workers: int = 16
    big: int = 1000  # the "1,000 endpoints on one node" test
    restarts: int = 2  # agent restarts behind the reconcile figure
    probe: int = 10  # sequential adds on the full node


QUICK = Sizes(rounds=1, seq=3, conc=4, workers=2, big=8, restarts=1, probe=2)


def _addr(i: int) -> str:
    return f"10.1.{i // 250}.{i % 250 + 1}/32"


# ------------------------------------------------------------------------------------------
# front ends: each has add(i, pod) and delete(i, pod), safe to call from several threads


class EngineFront:
    name = "engine"

    def __init__(self, scope: Scope | None):
        from nkframe.engine import Engine

        if scope is None:
            return
        self.node = Node(scope, prefix="ne")
        self.engine = Engine(self.node.netns, scope.bpffs(), plugins=["l3"], uplink=self.node.uplink)
        self.engine.setup_uplink()

    @classmethod
    def on(cls, node: Node, bpffs_root: str) -> "EngineFront":
        """An Engine on an existing node and bpffs root (e.g. the agent's)."""
        from nkframe.engine import Engine

        f = cls(None)
        f.node, f.engine = node, Engine(node.netns, bpffs_root, plugins=["l3"], uplink=node.uplink)
        return f

    def add(self, i: int, pod: str) -> None:
        from nkframe.types import EndpointSpec

        self.engine.add_endpoint(EndpointSpec(id=f"ep{i}", netns=pod, addresses=[_addr(i)]))

    def delete(self, i: int, pod: str) -> None:
        self.engine.remove_endpoint(f"ep{i}")


class AgentFront:
    """An agent in its own process, as deployed (``nkframe agent run``), talked to by clients."""

    name = "agent"

    def __init__(self, scope: Scope):
        self.scope = scope
        self.node = Node(scope, prefix="na")
        self.bpffs = scope.bpffs()
        rundir = scope.tmpdir("nkbench-agent-")
        os.chmod(rundir, 0o700)
        self.socket = os.path.join(rundir, "agent.sock")
        self.errlog = os.path.join(rundir, "agent.log")
        self.proc: subprocess.Popen | None = None
        self._local = threading.local()
        self._clients: list = []
        self.start()

    def argv(self) -> list[str]:
        exe = os.path.join(os.path.dirname(sys.executable), "nkframe")
        return [exe, "--netns", self.node.netns, "--bpffs-root", self.bpffs, "agent", "run",
                "--socket", self.socket, "--plugin", "l3", "--uplink", self.node.uplink]

    def start(self, timeout: float = 120) -> dict:
        """Start the agent and wait for its first answer; returns its ping (startup figures)."""
        from nkframe.agent.client import AgentClient
        from nkframe.agent.protocol import AgentUnavailable

        t0 = time.monotonic()
        with open(self.errlog, "a") as err:
            self.proc = self.scope.popen(self.argv(), stdout=subprocess.DEVNULL, stderr=err)
        info: dict = {}

        def up() -> bool:
            nonlocal info
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}: {open(self.errlog).read()[-2000:]}")
            try:
                with AgentClient(self.socket, timeout=timeout) as c:
                    info = c.ping()
                return info.get("pid") == self.proc.pid
            except (AgentUnavailable, OSError):
                return False

        wait_for(up, timeout, "agent start")
        info["ready_seconds"] = time.monotonic() - t0
        return info

    def stop(self) -> None:
        self.close_clients()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        raise RuntimeError("no VmRSS")

    def client(self):
        from nkframe.agent.client import AgentClient

        c = getattr(self._local, "client", None)
        if c is None:
            c = AgentClient(self.socket, node_netns=self.node.netns, bpffs_root=self.bpffs, timeout=300)
            self._local.client = c
            self._clients.append(c)
        return c

    def close_clients(self) -> None:
        for c in self._clients:
            c.close()
        self._clients.clear()
        self._local = threading.local()

    def add(self, i: int, pod: str) -> None:
        from nkframe.types import EndpointSpec

        self.client().add_endpoint(EndpointSpec(id=f"ep{i}", netns=pod, addresses=[_addr(i)]))

    def delete(self, i: int, pod: str) -> None:
        self.client().remove_endpoint(f"ep{i}")


class AgentTcFront:
    """The same agent, asked to attach with tc cls_bpf instead of its default (TCX here).

    On this kernel a TCX (or netkit) link attach waits for RCU grace periods while it holds
    rtnl; a cls_bpf filter does not.  This row shows what that choice costs an add."""

    name = "agent.tc"

    def __init__(self, agent: AgentFront):
        self.agent = agent

    def add(self, i: int, pod: str) -> None:
        from nkframe.types import EndpointSpec

        self.agent.client().add_endpoint(EndpointSpec(id=f"tc{i}", netns=pod, addresses=[_addr(i)], attach="tc"))

    def delete(self, i: int, pod: str) -> None:
        self.agent.client().remove_endpoint(f"tc{i}")


class CniFront:
    """A CNI plugin binary from /usr/lib/cni, run exactly as a runtime runs it."""

    def __init__(self, scope: Scope, plugin: str = "ptp", config: dict | None = None):
        self.name = plugin
        self.node = Node(scope, prefix="nc")
        self.data_dir = scope.tmpdir("nkbench-ipam-")
        self.config = config or ptp_config(self.data_dir)

    def _call(self, cmd: str, i: int, pod: str) -> None:
        cni_invoke(cmd, self.config, container_id=f"nkbench-{i}", pod_netns=pod, node_netns=self.node.netns)

    def add(self, i: int, pod: str) -> None:
        self._call("ADD", i, pod)

    def delete(self, i: int, pod: str) -> None:
        self._call("DEL", i, pod)


# ------------------------------------------------------------------------------------------


def _timed(fn: Callable[[int, str], None], i: int, pod: str) -> float:
    t = time.perf_counter()
    fn(i, pod)
    return time.perf_counter() - t


def round_latencies(front, pods: Sequence[str], workers: int) -> tuple[list[float], list[float], float, float]:
    """Add an endpoint in every pod, then remove them all: each operation's latency (s) and the
    wall time of all adds and of all removes.  workers=1 is sequential."""
    idx = list(range(len(pods)))
    if workers <= 1:
        t0 = time.perf_counter()
        adds = [_timed(front.add, i, pods[i]) for i in idx]
        t1 = time.perf_counter()
        dels = [_timed(front.delete, i, pods[i]) for i in idx]
        t2 = time.perf_counter()
        return adds, dels, t1 - t0, t2 - t1
    with ThreadPoolExecutor(workers) as ex:
        t0 = time.perf_counter()
        adds = list(ex.map(lambda i: _timed(front.add, i, pods[i]), idx))
        t1 = time.perf_counter()
        dels = list(ex.map(lambda i: _timed(front.delete, i, pods[i]), idx))
        t2 = time.perf_counter()
    return adds, dels, t1 - t0, t2 - t1


def run(rec: Recorder, scope: Scope, *, quick: bool = False, sizes: Sizes | None = None) -> None:
    sizes = sizes or (QUICK if quick else Sizes())
    rec.section = "control"
    rec.log(f"control plane: {sizes.rounds} rounds of {sizes.seq} sequential and {sizes.conc} "
            f"concurrent ({sizes.workers} workers) adds/removes per front end")
    if not have_cni("ptp") or not have_cni("host-local"):
        rec.skip("control plane yardstick", "ptp/host-local not in /usr/lib/cni (apt-get install containernetworking-plugins)")
        return
    pods = [scope.netns("p") for _ in range(max(sizes.seq, sizes.conc))]
    agent = AgentFront(scope)
    fronts = [CniFront(scope), EngineFront(scope), agent, AgentTcFront(agent)]
    cni = nkframe_cni_front(scope, rec)
    if cni is not None:
        fronts.append(cni)
    # per (front, mode): {"add": [p50 per round], ...}
    runs: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in range(sizes.rounds):
        for mode, n, workers in (("seq", sizes.seq, 1), (f"c{sizes.workers}", sizes.conc, sizes.workers)):
            for front in fronts:
                adds, dels, _, _ = round_latencies(front, pods[:n], workers)
                d = runs.setdefault((front.name, mode), {})
                for verb, xs in (("add", adds), ("del", dels)):
                    d.setdefault(f"{verb}.p50", []).append(percentile(xs, 50) * 1000)
                    d.setdefault(f"{verb}.p99", []).append(percentile(xs, 99) * 1000)
                rec.log(f"round {r + 1}/{sizes.rounds} {mode:4s} {front.name:7s} add p50 {percentile(adds, 50) * 1000:7.1f} ms, del p50 {percentile(dels, 50) * 1000:7.1f} ms")
    for mode in ("seq", f"c{sizes.workers}"):
        m = "" if mode == "seq" else f".{mode}"
        for key in ("add.p50", "add.p99", "del.p50", "del.p99"):
            verb, pct = key.split(".")
            base = rec.add(f"ptp.{verb}{m}.{pct}", Stat.of(runs[("ptp", mode)][key]), "ms")
            for front in fronts[1:]:
                rec.add(f"endpoint.{verb}{m}.{pct}.{front.name}", Stat.of(runs[(front.name, mode)][key]), "ms", baseline=base)
    attach_cost(rec, scope, sizes)
    big(rec, scope, agent, fronts[0], sizes)


def attach_cost(rec: Recorder, scope: Scope, sizes: Sizes) -> None:
    """What the kernel charges for hooking one program onto a fresh device: a TCX link
    (``BPF_LINK_CREATE``) beside a tc cls_bpf filter (clsact + filter over netlink), and the
    detaches.  The same loaded program, nothing else in the timing.  The device is a veth pair
    made the way an endpoint's is (its peer created in a pod's namespace); ``kernel.pair`` times
    that creation, ``kernel.add`` the pair and the attach right after it: the kernel's share of
    every add, which no ordering of nkframe's own work removes.  ``kernel.attach.*.later``: the
    same attach 50 ms after the pair was made (a TCX attach waits for an RCU grace period, and
    the pair's creation has just started one)."""
    from nkframe import bpf, netns, objects
    from nkframe.attach import tc, tcx
    from nkframe.netlink import links

    TC_PRIO = tc.PRIO_BASE + tc.PRIO_STEP
    n = max(sizes.seq // 3, 2)
    ns, pod = scope.netns("ka"), scope.netns("kp")
    rounds: dict[str, list[float]] = {}
    obj = bpf.BpfObject.open(objects.path("count"))
    try:
        obj.load()
        prog = next(iter(obj.programs.values()))
        for r in range(sizes.rounds):
            lat: dict[str, list[float]] = {}
            # As adds come one after the other: pairs made and programs attached in turn, all
            # kept; then every program detached; then the devices deleted (untimed).
            for mech, wait in (("tcx", 0.0), ("tc", 0.0), ("tcx.later", 0.05)):
                made = []
                with netns.enter(ns):
                    for i in range(n):
                        name = f"k{r}{mech[:3]}{'w' if wait else ''}{i}"
                        t0 = time.perf_counter()
                        idx = links.create_veth(links.VethSpec(name=name, peer_name=f"p{name}", peer_netns=pod)).ifindex
                        t1 = time.perf_counter()
                        if wait:
                            time.sleep(wait)
                            t1 = time.perf_counter()
                        if mech == "tc":
                            # The clsact qdisc and one cls_bpf filter at a fixed priority: the
                            # two kernel requests of a tc attach, without the backend's query
                            # for a free priority.
                            bpf.tc_hook_create(idx, bpf.TC_INGRESS)
                            bpf.tc_attach(idx, bpf.TC_INGRESS, prog.fd, handle=tc.HANDLE, priority=TC_PRIO)
                            att = idx
                        else:
                            # An open fd on the link, no pin (closing the fd detaches).
                            att = tcx.backend.attach_unpinned(idx, "ingress", prog)
                        t2 = time.perf_counter()
                        made.append((name, att))
                        lat.setdefault(f"{mech}.attach", []).append((t2 - t1) * 1000)
                        if not wait:
                            lat.setdefault("pair", []).append((t1 - t0) * 1000)
                            lat.setdefault(f"{mech}.add", []).append((t2 - t0) * 1000)
                    for name, att in made:
                        t0 = time.perf_counter()
                        if mech == "tc":
                            bpf.tc_detach(att, bpf.TC_INGRESS, handle=tc.HANDLE, priority=TC_PRIO)
                        else:
                            att.detach()
                        lat.setdefault(f"{mech}.detach", []).append((time.perf_counter() - t0) * 1000)
                        if mech != "tc":
                            att.close()
                for name, _ in made:
                    links.delete_link(name, netns=ns)
            for k, xs in lat.items():
                rounds.setdefault(k, []).append(percentile(xs, 50))
    finally:
        obj.close()
    for verb in ("attach", "detach"):
        base = rec.add(f"kernel.{verb}.p50.tc", Stat.of(rounds[f"tc.{verb}"]), "ms")
        rec.add(f"kernel.{verb}.p50.tcx", Stat.of(rounds[f"tcx.{verb}"]), "ms", baseline=base)
    rec.add("kernel.attach.p50.tcx.later", Stat.of(rounds["tcx.later.attach"]), "ms", baseline=rec.get("kernel.attach.p50.tcx"))
    ptp = rec.get("ptp.add.p50")
    rec.add("kernel.pair.p50", Stat.of(rounds["pair"]), "ms", baseline=ptp)
    for mech in ("tc", "tcx"):
        rec.add(f"kernel.add.p50.{mech}", Stat.of(rounds[f"{mech}.add"]), "ms", baseline=ptp)


class NkframeCniFront:
    """nkframe's CNI plugin as a runtime runs it: ``nkframe-cni-shim`` (the C shim that has the
    agent run the commands) exec'd by type ``nkframe`` from a private CNI_PATH (symlinks to it
    and to host-local, nothing installed in /usr/lib/cni), with host-local IPAM like ptp, against
    an agent of its own (its own node), found through NKFRAME_AGENT_SOCKET as a runtime's
    environment would carry it."""

    name = "cni"

    def __init__(self, scope: Scope, exe: str):
        from nkbench.topo import CNI_PATH

        self.agent = AgentFront(scope)
        scope.defer("cni agent", self.agent.stop)  # before the scope's SIGKILL of the process
        self.node = self.agent.node
        self.bin_dir = scope.tmpdir("nkbench-cnibin-")
        os.symlink(os.path.join(CNI_PATH, "host-local"), os.path.join(self.bin_dir, "host-local"))
        os.symlink(exe, os.path.join(self.bin_dir, "nkframe"))
        self.data_dir = scope.tmpdir("nkbench-ipam-")
        self.config = dict(ptp_config(self.data_dir), type="nkframe")
        self._stdin = json.dumps(self.config)

    def _call(self, cmd: str, i: int, pod: str) -> None:
        # As nkbench.topo.cni_invoke runs ptp (nsenter into the node, CNI_* and stdin), plus the
        # socket variable the shim reads instead of the configuration's agentSocket.
        from nkbench.topo import CniError, in_netns
        from nkframe import netns

        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": cmd,
            "CNI_CONTAINERID": f"nkbench-{i}",
            "CNI_NETNS": netns.netns_path(pod),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": self.bin_dir,
            "NKFRAME_AGENT_SOCKET": self.agent.socket,
        }
        r = subprocess.run(in_netns(self.node.netns, os.path.join(self.bin_dir, "nkframe")), input=self._stdin, env=env,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise CniError(f"nkframe {cmd} nkbench-{i}: exit {r.returncode}: {r.stdout.strip() or r.stderr.strip()}")

    def add(self, i: int, pod: str) -> None:
        self._call("ADD", i, pod)

    def delete(self, i: int, pod: str) -> None:
        self._call("DEL", i, pod)


def nkframe_cni_front(scope: Scope, rec: Recorder):
    """nkframe's own CNI plugin (rows ``endpoint.*.cni``): the shim, invoked exactly like ptp but
    found in a private CNI_PATH next to host-local and pointed at an agent it starts.  One
    ADD/DEL first proves the set-up; if it fails the rows are skipped with the plugin's answer."""
    import nkframe

    exe = os.path.join(os.path.dirname(nkframe.__file__), "_bin", "nkframe-cni-shim")
    if not os.access(exe, os.X_OK):
        rec.skip("endpoint.*.cni rows", f"no {exe} (make setup builds it with cc)")
        return None
    try:
        front = NkframeCniFront(scope, exe)
        probe = scope.netns("cp")
        front.add(99999, probe)
        front.delete(99999, probe)
    except Exception as e:  # noqa: BLE001 - a set-up that fails is a skip, not a crash of the section
        rec.skip("endpoint.*.cni rows", f"nkframe CNI plugin failed its first ADD/DEL: {e}")
        return None
    return front


def _many(fn: Callable[[int, str], None], pods: Sequence[str], workers: int, offset: int = 0) -> float:
    """fn(i, pod) for every pod with ``workers`` in flight; wall time (s)."""
    with ThreadPoolExecutor(workers) as ex:
        t0 = time.perf_counter()
        list(ex.map(lambda i: fn(offset + i, pods[i]), range(len(pods))))
        return time.perf_counter() - t0


def _probe(front, pods: Sequence[str], offset: int) -> list[float]:
    """Sequential adds on a full node (removed again at once): does an add slow down as the
    node fills up?  Latencies in ms."""
    lat = [_timed(front.add, offset + j, pod) * 1000 for j, pod in enumerate(pods)]
    for j, pod in enumerate(pods):
        front.delete(offset + j, pod)
    return lat


def big(rec: Recorder, scope: Scope, agent: AgentFront, ptp: CniFront, sizes: Sizes) -> None:
    """1,000 endpoints on one node through the agent (16 clients), ptp the same way beside it;
    a few sequential adds on the full node; the agent's memory; agent restarts."""
    n, w = sizes.big, sizes.workers
    # The same restarts with no endpoint first: what a restart costs with nothing to reconcile.
    empty = []
    for _ in range(sizes.restarts):
        agent.stop()
        empty.append(agent.start()["startup"]["reconcile_seconds"])
    rss0 = agent.rss_mb()
    rec.log(f"{n} endpoints: creating {n + sizes.probe} pod namespaces")
    pods = [scope.netns("q") for _ in range(n)]
    extra = [scope.netns("x") for _ in range(sizes.probe)]
    rec.log(f"{n} endpoints through ptp ({w} concurrent)")
    ptp_add = _many(ptp.add, pods, w)
    ptp_probe = _probe(ptp, extra, n)
    ptp_del = _many(ptp.delete, pods, w)
    rec.log(f"ptp: add {ptp_add:.1f} s, del {ptp_del:.1f} s; now through the agent")
    add_total = _many(agent.add, pods, w)
    agent_probe = _probe(agent, extra, n)
    # The same probe through an Engine in this process on the agent's node and pins (the agent
    # idles meanwhile): what of the growth is the Engine's and what the agent's own.
    engine_probe = _probe(EngineFront.on(agent.node, agent.bpffs), extra, n)
    rss = agent.rss_mb()
    rec.log(f"agent: {n} adds in {add_total:.1f} s, RSS {rss:.0f} MB (idle {rss0:.0f} MB); restarting {sizes.restarts}x")
    rec.add(f"ptp.n{n}.add.total", Stat.of([ptp_add]), "s")
    rec.add(f"endpoint.n{n}.add.total.agent", Stat.of([add_total]), "s", baseline=rec.get(f"ptp.n{n}.add.total"))
    # An add on the full node against one on the empty node: per-add cost that grows with n.
    rec.add(f"ptp.add.p50.at_n{n}", Stat.of([percentile(ptp_probe, 50)]), "ms", baseline=rec.get("ptp.add.p50"))
    rec.add(f"endpoint.add.p50.agent.at_n{n}", Stat.of([percentile(agent_probe, 50)]), "ms", baseline=rec.get("endpoint.add.p50.agent"))
    rec.add(f"endpoint.add.p50.engine.at_n{n}", Stat.of([percentile(engine_probe, 50)]), "ms", baseline=rec.get("endpoint.add.p50.engine"))
    base_rss = rec.add("agent.rss.idle", Stat.of([rss0]), "MB")
    rec.add(f"agent.rss.n{n}", Stat.of([rss]), "MB", baseline=base_rss)
    # Restart: a fresh agent reconciles from the pins.  Its own startup figure is the reconcile.
    recs, readys, rss_after = [], [], []
    for _ in range(sizes.restarts):
        agent.stop()
        info = agent.start()
        recs.append(info["startup"]["reconcile_seconds"])
        readys.append(info["ready_seconds"])
        rss_after.append(agent.rss_mb())
        healthy = len(info["startup"]["reconcile"]["healthy"])
        if healthy != n:
            rec.skip("agent restart", f"reconcile found {healthy} healthy endpoints, expected {n}")
    rec.add("agent.restart.reconcile.n0", Stat.of(empty), "s")
    # Nothing else reconciles, so the yardstick is the goal (a baseline of n=0: not measured).
    goal = Figure("goal.reconcile", Stat(5.0, 0.0, 0), "s")
    rec.add(f"agent.restart.reconcile.n{n}", Stat.of(recs), "s", baseline=goal)
    rec.add(f"agent.restart.ready.n{n}", Stat.of(readys), "s")
    rec.add(f"agent.rss.after_restart.n{n}", Stat.of(rss_after), "MB", baseline=base_rss)
    rec.log(f"removing {n} endpoints through the agent")
    del_total = _many(agent.delete, pods, w)
    rec.add(f"ptp.n{n}.del.total", Stat.of([ptp_del]), "s")
    rec.add(f"endpoint.n{n}.del.total.agent", Stat.of([del_total]), "s", baseline=rec.get(f"ptp.n{n}.del.total"))
    agent.stop()
