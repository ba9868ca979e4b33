"""The readable outputs: summary table, plot, docs/benchmarks.md."""

from __future__ import annotations

import re
import os
import platform
import subprocess
import time
from typing import Callable, Iterable
from pathlib import Path

from nkbench.core import Figure, Recorder


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def table(rec: Recorder) -> str:
    rows = [("figure", "value", "±spread", "unit", "n", "baseline", "baseline value", "ratio")]
    for f in rec.figures:
        d = f.to_dict()
        rows.append((f.name, _fmt(f.value), _fmt(f.stat.spread), f.unit, str(f.stat.n),
                     d["baseline_name"] or "", _fmt(d["baseline_value"]) if f.baseline else "",
                     f"{f.ratio:.2f}" if f.ratio is not None else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i in (0, 3, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    if rec.notes:
        lines.append("")
        lines += [f"note: {n}" for n in rec.notes]
    return "\n".join(lines)


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    distro = ""
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    repo = Path(__file__).resolve().parents[2]
    info = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_mb": mem,
        "kernel": platform.release(),
        "distro": distro,
        "python": platform.python_version(),
        "commit": _cmd("git", "-C", str(repo), "rev-parse", "--short", "HEAD"),
        "virt": _cmd("systemd-detect-virt") or "unknown",
        "iperf3": _cmd("iperf3", "--version").splitlines()[0] if _cmd("iperf3", "--version") else "",
        "cni_plugins": _cmd("dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins"),
    }
    try:
        from nkframe import bpf

        info["libbpf"] = bpf.libbpf_version()
        info["libxdp"] = bpf.libxdp_version()
    except Exception:  # noqa: BLE001 - informative only
        pass
    return info


def write_all(rec: Recorder, *, machine: dict, started: float, jsonl: Path, png: Path, docs: Path, quick: bool) -> None:
    machine = dict(machine, load_end=_load())
    try:
        plot(rec, png)
    except Exception as e:  # noqa: BLE001 - no matplotlib: say so, keep the rest
        rec.skip("plot", f"{type(e).__name__}: {e} (pip install matplotlib)")
        png = None
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(markdown(rec, machine=machine, started=started, jsonl=jsonl, png=png, docs=docs, quick=quick))


def _load() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


# ------------------------------------------------------------------------------------------
# goals


class Goal:
    """A target from the issue: which figures it reads and the test each must pass."""

    def __init__(self, text: str, pattern: str, test: Callable[[Figure], tuple[bool, str]], limit: str = ""):
        self.text, self.pattern, self.test, self.limit = text, re.compile(pattern), test, limit

    def evaluate(self, figures: Iterable[Figure]) -> list[tuple[Figure, bool, str]]:
        return [(f, *self.test(f)) for f in figures if self.pattern.fullmatch(f.name)]


def _ratio_le(k: float):
    return lambda f: (f.ratio is not None and f.ratio <= k, f"{_fmt(f.value)} {f.unit} = {f.ratio:.2f} × {_fmt(f.baseline.value)} (goal ≤ {k})" if f.ratio is not None else "no baseline")


def _ratio_ge(k: float):
    return lambda f: (f.ratio is not None and f.ratio >= k, f"{_fmt(f.value)} {f.unit} = {f.ratio:.2f} × {_fmt(f.baseline.value)} (goal ≥ {k})" if f.ratio is not None else "no baseline")


def _over_le(k: float):
    def test(f: Figure):
        over = f.value - f.baseline.value
        return over <= k, f"{_fmt(f.value)} − {_fmt(f.baseline.value)} = +{over:.0f} ns (goal ≤ +{k:.0f})"
    return test


def _value_le(k: float):
    return lambda f: (f.value <= k, f"{_fmt(f.value)} {f.unit} (goal ≤ {k:g})")


# What limits a missed goal, from profiling this code on this machine (bench/profile.py
# reproduces the control-plane profile).  Shown only next to a goal that missed.
LIMITS = {
    "add": (
        "With TCX (what `auto` picks on this kernel) the kernel itself takes more than the whole "
        "budget: one TCX link attach waits for RCU grace periods while it holds rtnl "
        "(`tcx_link_prog_attach`: `tcx_entry_sync()` = `synchronize_rcu()`, then "
        "`bpf_mprog_commit()`), see `kernel.attach.p50.tcx` beside `kernel.attach.p50.tc` (a "
        "cls_bpf filter, no grace period). netkit links attach the same way "
        "(`netkit_link_prog_attach`). The rest of an add was ours and is gone: netlink through "
        "pyroute2 (15 sockets and 26 requests per add at ~0.65 ms each; now one plain rtnetlink "
        "socket per call, ~0.02 ms a request) and a load and verification of the L3 program per "
        "endpoint (~3.5 ms; now one shared copy per engine, `ProgramSpec.shared`). With tc "
        "attach (`endpoint.add.p50.agent.tc`) the add is the device, addresses, routes and "
        "pins. What remains is the kernel's device creation and the agent's round trip; "
        "`bench/profile.py` shows the split."
    ),
    "cni-add": (
        "The kernel's share of our ADD alone (`kernel.add.p50.tcx`, beside `ptp.add.p50`) is "
        "most or all of ptp's whole ADD: a TCX attach waits for an RCU grace period holding rtnl, and "
        "one issued right after its veth pair was made waits for about two, since making the "
        "pair starts one (`kernel.attach.p50.tcx.later`: the same attach 50 ms after the pair, "
        "one period). An ADD has no such time of other work to put between the two: making the "
        "pair before the IPAM step was measured on this machine and gained nothing. Devices "
        "made ahead of time with their programs attached do not help either: moving the pod's "
        "end into the pod's namespace waits in `rcu_barrier()` under rtnl, ~16 ms here, longer "
        "than the attach. On top of the kernel: the shim and the request (~1 ms), host-local "
        "in process (~1.5 ms: like host-local it reads every lease of the network), the "
        "Engine's checks, spec and pins (~2 ms) and the datapath's configuration (~2 ms of "
        "netlink); `bench/profile.py` shows the Engine's split."
    ),
    "c16": (
        "The kernel runs the adds one at a time: each TCX attach holds rtnl through its grace "
        "periods (`kernel.attach.p50.tcx`), which stalls every other add's netlink requests, "
        "so 48 adds hold rtnl for about 48 of them whatever runs beside them, while ptp's "
        "processes attach nothing. The agent's own work is not what waits: its CPU time per "
        "add is about a third of an add's wall time at c16 (measured on this machine). "
        "Ordering concurrent adds' kernel work so that attaches run back to back (one grace "
        "period each instead of two) was tried: back-to-back attaches alternated between one "
        "and two periods and adds did not get faster, so it was not kept."
    ),
    "n1000": (
        "The per-add cost above, 1,000 times and serialised: the agent runs adds one at a time "
        "behind the Engine's lock, so 16 clients overlap only their own share, and every TCX "
        "attach holds rtnl through its RCU grace periods, which also stalls the other adds' "
        "netlink requests. The agent's per-add address check no longer grows with the node "
        "(an index instead of reading every stored spec): compare "
        "`endpoint.add.p50.agent.at_n1000` with `endpoint.add.p50.agent`."
    ),
    "tput": (
        "Profiled with perf (`bench/profile.py --tput routing|tcx|tc|veth`, 4 streams, samples "
        "of CPU 0, which runs the sender and every softirq of the path): on veth the datapath's "
        "per-skb work (`l3_fwd`: FIB lookup and `bpf_redirect_neigh`, ~2-3% of the CPU) costs "
        "about what it replaces (the node's `ip_rcv` + `ip_forward` + route lookup, ~3%), and "
        "both are small next to what every configuration pays the same: copying between user "
        "space and skbs (~30-37%), TCP (~10-14%) and cross-CPU wake-ups. With GSO skbs of up to "
        "64 KB per forwarding decision, skipping the node's stack cannot buy 5%. The gain has to "
        "come per byte: netkit (the program runs in the pod's transmit, no backlog-queue hop), "
        "which this host's kernel lacks (see the VM tier)."
    ),
    "tput-veth": (
        "Pod → outside crosses two veth pairs (pod–node, node–outside) and the direct veth one: "
        "every skb pays the device and backlog-queue hop twice (perf: devices ~4.5% of the "
        "sender CPU against ~3.5% for one hop), plus the forwarding step itself."
    ),
    "reconcile": (
        "Profile it with `bench/profile.py --reconcile --adds N` (py-spy by layer). Before "
        "commit 8e40d82 about 70% of a reconcile was pyroute2: three netlink sessions per "
        "endpoint to see whether its device existed; one link dump per reconcile replaced them."
    ),
    "policy": (
        "Profile it with `bench/profile.py --policy 10000` (perf over the program's test runs). "
        "While the policy used one LPM trie for every endpoint, generation, direction and "
        "family, 74% of the test-run samples ended in the kernel's `trie_lookup_elem`; commit "
        "1a61e66 replaced the trie with hash probes per prefix length."
    ),
}


GOALS = [
    Goal("Endpoint add p50 through the agent ≤ 0.5 × ptp's ADD p50", r"endpoint\.add\.p50\.agent(\.tc)?", _ratio_le(0.5), "add"),
    Goal("CNI ADD p50 through the shim ≤ 1.0 × ptp's ADD p50 (default attach: TCX here)", r"endpoint\.add\.p50\.cni", _ratio_le(1.0), "cni-add"),
    Goal("16 concurrent ADDs: p50 ≤ 1.0 × ptp's", r"endpoint\.add\.c16\.p50\.(agent|cni)", _ratio_le(1.0), "c16"),
    Goal("pod → outside throughput with nkframe ≥ 1.05 × kernel routing without BPF", r"tput\.pod-out\.p\d+\.(tcx|tc)", _ratio_ge(1.05), "tput"),
    Goal("pod → outside throughput with nkframe ≥ 0.95 × the direct veth limit", r"tput\.pod-out\.p\d+\.(tcx|tc)\.vs-veth", _ratio_ge(0.95), "tput-veth"),
    Goal("Policy with 10,000 rules adds ≤ 60 ns per packet over the empty program", r"pkt\.policy\.r10000\.[a-z0-9-]+", _over_le(60), "policy"),
    Goal("1,000 endpoints added in ≤ 60 s", r"endpoint\.n1000\.add\.total\.agent", _value_le(60), "n1000"),
    Goal("Reconcile after an agent restart ≤ 5 s", r"agent\.restart\.reconcile\.n1000", _value_le(5), "reconcile"),
    Goal("Agent RSS ≤ 200 MB", r"agent\.rss\.(n1000|after_restart\.n1000)", _value_le(200)),
]


def goal_rows(rec: Recorder) -> list[tuple[str, str, str, str]]:
    """(goal, verdict, details, what limits it)"""
    out = []
    for g in GOALS:
        res = g.evaluate(f for f in rec.figures if not f.name.endswith(".empty"))
        if not res:
            out.append((g.text, "not measured", "", ""))
            continue
        ok = all(r[1] for r in res)
        some = any(r[1] for r in res)
        verdict = "**holds**" if ok else ("**partly**" if some else "**missed**")
        details = "<br>".join(f"`{f.name}`: {d} {'✓' if good else '✗'}" for f, good, d in res)
        out.append((g.text, verdict, details, "" if ok else LIMITS.get(g.limit, "")))
    return out


# ------------------------------------------------------------------------------------------
# Markdown

SECTIONS = {
    "control": ("Control plane", """Endpoint add and remove through the **Engine API** (in-process), the **agent API** (`nkframe agent run` in its own process, `AgentClient` over its Unix socket) and, once it exists, nkframe's CNI plugin, each beside the reference **`ptp` CNI plugin with `host-local` IPAM** from Debian's containernetworking-plugins, invoked the way a runtime invokes it (`CNI_COMMAND=ADD|DEL`, `CNI_CONTAINERID`, `CNI_NETNS=/run/netns/<pod>`, `CNI_IFNAME=eth0`, `CNI_PATH=/usr/lib/cni`, the network configuration on stdin, run inside the node's namespace). Every front end has a node namespace of its own and adds into the same pod namespaces, one round after another (ptp, Engine, agent, ptp, ...). A round adds an endpoint in each pod and then removes them all; its p50 and p99 over those operations are one run. `c16`: 16 operations in flight (16 threads; for the agent 16 client connections); their latency includes waiting, since both the Engine (one lock) and the agent run one add or remove at a time, while ptp invocations run in parallel. `n1000`: 1,000 endpoints on one node through the agent with 16 clients, ptp the same way (one run each: together the longest test); `at_n1000`: 10 sequential adds on that full node beside the sequential adds on an empty one (does an add slow down as the node fills?); then the agent is restarted twice (SIGTERM, a new process) and its start-up reconcile over the 1,000 pinned endpoints is timed by the agent itself; `ready` is from exec to the first answer, Python start-up included. `agent.rss.*` is the agent process's VmRSS. `agent.tc`: the same agent asked for tc cls_bpf attachment instead of its default (TCX on this kernel), in the same rounds. `cni`: nkframe's CNI plugin as a runtime runs it, exactly like ptp: the C shim `nkframe-cni-shim` exec'd per call, whose agent (one of its own) runs the CNI commands in process, host-local's allocation included (`docs/cni.md`, "host-local in process"); same host-local configuration as ptp. `kernel.attach.*` / `kernel.detach.*`: the kernel's own cost of hooking one loaded program onto a veth pair made just before (its peer in a pod's namespace, as an endpoint's) (a TCX link vs a tc cls_bpf filter with its clsact qdisc) and of taking it off, timed around the one system call / netlink request and nothing else; pairs are made and hooked one after the other and all kept, then all unhooked, as adds and removes come. `kernel.pair`: making that pair; `kernel.add.*`: the pair and the attach right after it, the kernel's share of every add, beside ptp's whole ADD; `kernel.attach.p50.tcx.later`: the same TCX attach 50 ms after the pair was made."""),
    "perpacket": ("Per-packet cost", """`BPF_PROG_TEST_RUN` nanoseconds per packet (the kernel's own average over 250 repetitions; a run is the median of 300 such calls) of the real programs: `l3`/`l2` are the `l3_fwd`/`l2_fwd` programs of endpoints an Engine built on a node (their maps hold real entries, their FIB lookups see the node's routes: the test runs execute in the node's namespace), `out-pod` is the uplink's `dp_uplink_in`, `policy.rN` is `policy_egress` against a compiled policy of N rules per direction (`v4-rule`/`v6-rule`: the packet matches a rule's prefix; `v4-norule`: it matches none). Each return value is checked first (7 = redirect for forwarding; the policy verdict against the reference evaluator), so a figure is the path its name says. The baseline is an empty `tc` program (`return -1`), measured interleaved with each figure. Forwarding rewrites the packet in place (TTL − 1), which is why one call repeats only 250 times from TTL 255."""),
    "throughput": ("Throughput", """iperf3 (TCP, `-t 3 -O 1`: the first second, slow start, is left out; receiver's rate), one stream (`p1`) and four (`p4`), the client pinned to CPU 0 and the server to CPU 1 in every case (unpinned, the scheduler's placement moved single runs by ±30% on this 2-core machine). `veth`: one veth between two namespaces, the machine's limit for one hop. `routing`: the node routes between veths with no BPF, built by the ptp CNI plugin (what ptp gives). `tcx` / `tc`: nkframe's L3 datapath with every program (pod egress `l3_fwd`, uplink `dp_uplink_in`) attached through TCX or through tc cls_bpf. nkframe rows have the routing figure as baseline, and a `.vs-veth` twin against the one-hop limit. All topologies exist side by side and every round runs every case once, rotating the order. On this host the pods get veth pairs (no netkit in the kernel)."""),
    "afxdp": ("AF_XDP", """A veth pair in copy mode (veth has no zero-copy), 64-byte UDP frames. The sender is `BPF_PROG_TEST_RUN` in live-frames mode with an `XDP_TX` program on the sending end (the method xdp-trafficgen uses; Debian's xdp-tools 1.3.1 does not load on this kernel). Where the kernel refuses live frames (EPERM, as in a sandbox), every figure of the run uses the fallback sender instead, an AF_PACKET socket with `PACKET_QDISC_BYPASS` sending 1024 frames per `sendmmsg` (an skb per frame, so a much lower rate), and a note at the end of this report says so. The sender (and the softirq work it raises on the receiving end) runs on CPU 0, the Python side on CPU 1. `afxdp.kernel`: an XDP program on the receiving end counts and drops, the kernel-only rate. `afxdp.rx.python`: the receiver's program redirects to an AF_XDP socket and a Python loop receives batches of descriptors (`nkframe.xsk.XskSocket.recv_into`, 64 per call: the frames stay in the UMEM and the next call gives them back to the fill ring) and counts them; `afxdp.rx.offered` is what the XDP program saw meanwhile (the sender's CPU also copies every frame into the UMEM, and the sender slows down when the receiver's ring is full). `afxdp.tx.python`: a Python loop sends through an AF_XDP socket (`XskSocket.send`, a list of 64 frames per call, copied and queued in one C call) and the receiver's count-and-drop program counts arrivals. `afxdp.echo.python`: the same sender as `afxdp.kernel`; the receiving socket runs `XskSocket.echo`, a C loop with the GIL released that puts every received descriptor straight onto the same socket's TX ring (MAC addresses swapped in place, no copy) and recycles completions into the fill ring, and a second instance of the count-and-drop program, on the *sending* end, counts the frames that come back: frames per second returned to the sender. In copy mode the kernel builds an skb for every transmitted frame on the CPU that transmits, so echo and tx are bounded by its generic transmit path, not by Python."""),
    "vm": ("netkit VM tier (informative only)", """Inside QEMU with Debian's 6.12 kernel (CONFIG_NETKIT=y) under TCG, i.e. a software-emulated CPU: nkframe with netkit pairs and netkit links beside nkframe with veth pairs and TCX, iperf3 one stream, `-t 2 -O 1`. Emulation distorts absolute speed, and unevenly (the more instructions a path runs, the more it loses), so only the ratio says something."""),
}


def _fig_row(f: Figure) -> str:
    b = f.baseline
    base = f"`{b.name}`" if b else ""
    bval = f"{_fmt(b.value)}" + (f" ± {_fmt(b.stat.spread)}" if b and b.stat.n > 1 else "") if b else ""
    ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
    spread = f" ± {_fmt(f.stat.spread)}" if f.stat.n > 1 else ""
    return f"| `{f.name}` | {_fmt(f.value)}{spread} {f.unit} | {f.stat.n} | {base} | {bval} | {ratio} |"


def markdown(rec: Recorder, *, machine: dict, started: float, jsonl: Path, png: Path | None, docs: Path, quick: bool) -> str:
    def rel(p: Path) -> str:
        return os.path.relpath(p, docs.parent)

    L = ["# Benchmarks", ""]
    if quick:
        L += ["> **Quick run** (`--quick`): tiny sizes that only check the harness; these figures say nothing about nkframe.", ""]
    L += [
        f"Generated by `make bench` (`bench/run.py`) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}; "
        f"it took {(time.time() - started) / 60:.1f} minutes. Raw figures: [`{jsonl.name}`]({rel(jsonl)})"
        + (f", plot: [`{png.name}`]({rel(png)})" if png else "") + ". This file is written by the harness; edit `bench/nkbench/report.py` instead.",
        "",
        "Each figure is the **median** of `n` repeated runs, **± the spread** (max − min of those runs, same unit); "
        "**ratio** = value / baseline value, both measured in the same run. Lower is better for time, latency and ns; higher for Gbit/s and Mpps.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    labels = [("cpu", "CPU"), ("cpus", "CPUs"), ("memory_mb", "memory (MB)"), ("virt", "virtualisation"), ("kernel", "kernel"),
              ("distro", "distribution"), ("python", "Python"), ("libbpf", "libbpf"), ("libxdp", "libxdp"), ("iperf3", "iperf3"),
              ("cni_plugins", "containernetworking-plugins"), ("commit", "nkframe commit"), ("load_start", "load average at start"),
              ("load_end", "load average at end")]
    for k, label in labels:
        if machine.get(k) not in (None, ""):
            L.append(f"| {label} | {machine[k]} |")
    if rec.section_load:
        L.append("| load average as each section began | " + ", ".join(f"{k} {v:.2f}" for k, v in rec.section_load.items()) + " |")
    if png:
        L += ["", f"![benchmark figures]({rel(png)})"]
    L += ["", "## Goals", "", "| goal | verdict | figures |", "|---|---|---|"]
    limits = []
    for text, verdict, details, limit in goal_rows(rec):
        L.append(f"| {text} | {verdict} | {details} |")
        if limit:
            limits.append((text, limit))
    if limits:
        L += ["", "### What limits the misses", ""]
        for text, limit in limits:
            L += [f"- **{text}.** {limit}"]
    for key, (title, text) in SECTIONS.items():
        figs = [f for f in rec.figures if f.section == key]
        if not figs:
            continue
        L += ["", f"## {title}", "", text, "", "| figure | value | n | baseline | baseline value | ratio |", "|---|---|---|---|---|---|"]
        L += [_fig_row(f) for f in figs if not _is_baseline_only(f, figs)]
    if rec.notes:
        L += ["", "## Skipped or limited", ""] + [f"- {n}" for n in rec.notes]
    return "\n".join(L) + "\n"


def _is_baseline_only(f: Figure, figs: list[Figure]) -> bool:
    """Per-figure empty-program rows are shown as their figure's baseline, not on their own."""
    return f.name.endswith(".empty") and f.name != "pkt.empty"


# ------------------------------------------------------------------------------------------
# plot


def _err(f: Figure):
    runs = f.stat.runs or (f.value,)
    return [[f.value - min(runs)], [max(runs) - f.value]]


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot(rec: Recorder, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {f.name: f for f in rec.figures}
    fig, axes = plt.subplots(2, 2, figsize=(15, 10.5))
    fig.suptitle("nkframe benchmarks: each figure beside its baseline (median of runs, bars = min..max)", fontsize=12)

    # (a) control plane latency
    ax = axes[0][0]
    keys = [k for k in ("add.p50", "add.p99", "del.p50", "del.p99") ]
    modes = [""] + sorted({m.group(1) for n in figs if (m := re.match(r"ptp\.add\.(c\d+)\.p50$", n))})
    groups = [(f"{k.split('.')[0]}{'.' + m if m else ''}.{k.split('.')[1]}") for m in modes for k in keys]
    fronts = [("ptp", "ptp.{g}"), ("engine", "endpoint.{g}.engine"), ("agent", "endpoint.{g}.agent"), ("cni", "endpoint.{g}.cni")]
    fronts = [(lbl, pat) for lbl, pat in fronts if any(pat.format(g=g) in figs for g in groups)]
    width = 0.8 / max(1, len(fronts))
    for i, (lbl, pat) in enumerate(fronts):
        xs, ys, errs = [], [[], []], []
        for j, g in enumerate(groups):
            f = figs.get(pat.format(g=g))
            if f:
                xs.append(j + i * width)
                e = _err(f)
                errs.append(f.value)
                ys[0].append(e[0][0])
                ys[1].append(e[1][0])
        ax.bar(xs, errs, width, yerr=ys, label=lbl, capsize=2)
    ax.set_xticks([j + width * (len(fronts) - 1) / 2 for j in range(len(groups))], groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ms per endpoint operation")
    ax.set_title("control plane: add/remove latency (c16 = 16 in flight)")
    _legend(ax)

    # (b) per-packet ns
    ax = axes[0][1]
    pk = [f for f in rec.figures if f.name.startswith("pkt.") and f.baseline is not None]
    ys = range(len(pk))
    ax.barh([y + 0.2 for y in ys], [f.value for f in pk], 0.4, xerr=[[_err(f)[0][0] for f in pk], [_err(f)[1][0] for f in pk]], label="program", capsize=2)
    ax.barh([y - 0.2 for y in ys], [f.baseline.value for f in pk], 0.4, label="empty program", color="lightgray")
    ax.set_yticks(list(ys), [f.name[4:] for f in pk], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ns per packet (BPF_PROG_TEST_RUN)")
    ax.set_title("per-packet cost vs an empty tc program")
    _legend(ax)

    # (c) throughput
    ax = axes[1][0]
    cases = sorted({(m.group(1), m.group(2)) for n in figs if (m := re.match(r"tput\.([a-z-]+)\.(p\d+)\.(routing|tcx|tc)$", n))},
                   key=lambda c: (c[1], c[0]))
    confs = [c for c in ("veth", "routing", "tcx", "tc") if c == "veth" or any(f"tput.{d}.{s}.{c}" in figs for d, s in cases)]
    width = 0.8 / max(1, len(confs))
    for i, c in enumerate(confs):
        xs, vals, lo, hi = [], [], [], []
        for j, (d, s) in enumerate(cases):
            f = figs.get(f"tput.veth.{s}" if c == "veth" else f"tput.{d}.{s}.{c}")
            if f:
                xs.append(j + i * width)
                vals.append(f.value)
                e = _err(f)
                lo.append(e[0][0])
                hi.append(e[1][0])
        ax.bar(xs, vals, width, yerr=[lo, hi], label=c, capsize=2)
    ax.set_xticks([j + width * (len(confs) - 1) / 2 for j in range(len(cases))], [f"{d} {s}" for d, s in cases], rotation=20, fontsize=8)
    ax.set_ylabel("Gbit/s (iperf3, receiver)")
    ax.set_title("throughput (veth = one hop, the machine's limit)")
    _legend(ax)

    # (d) AF_XDP and the VM tier
    ax = axes[1][1]
    other = [f for f in rec.figures if f.name.startswith(("afxdp.", "vm.")) or re.match(r"(endpoint|ptp)\.n\d+\.", f.name)]
    if other:
        ys = range(len(other))
        ax.barh(list(ys), [f.value for f in other], xerr=[[_err(f)[0][0] for f in other], [_err(f)[1][0] for f in other]], capsize=2,
                color=["tab:green" if f.name.startswith("afxdp") else "tab:purple" if f.name.startswith("vm") else "tab:orange" for f in other])
        ax.set_yticks(list(ys), [f"{f.name} ({f.unit})" for f in other], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        for y, f in zip(ys, other):
            ax.text(f.value, y, f"  {_fmt(f.value)}" + (f"  ×{f.ratio:.2f}" if f.ratio is not None else ""), va="center", fontsize=7)
    ax.set_title("AF_XDP (Mpps), 1,000 endpoints (s), netkit VM (Gbit/s, informative)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
