"""What a node is running, read from bpffs and the kernel: the data behind ``nkframe status``.

Nothing here is remembered between calls; every figure is read when :func:`gather` runs:

* endpoints and their program chains from :meth:`Engine.endpoints` (bpffs pins + link info);
* **interface counters** of both ends of each endpoint's device (``IFLA_STATS64`` over
  rtnetlink, in the node and the pod namespace).  Where a drop shows up depends on the device:
  netkit counts a packet its program dropped as ``tx_dropped`` of the *transmitting* end (the pod
  end for ``from-pod``), while a TC/TCX ingress drop on a veth is not an interface counter at
  all -- only the program's own counters see it;
* **program run statistics** (``run_cnt``, ``run_time_ns``) from ``/proc/self/fdinfo`` of a
  program fd.  The kernel counts them only while BPF statistics are on (the
  ``kernel.bpf_stats_enabled`` sysctl, or a ``BPF_ENABLE_STATS`` fd held by some process), so
  with statistics off they read 0 and :attr:`NodeStatus.bpf_stats` says why;
* **plugin counters**: each plugin that implements ``nkframe_endpoint_counters`` (when the hook
  contract has it) reports its own; every other endpoint-scoped map that looks like a counter
  array (``ARRAY``/``PERCPU_ARRAY`` of ``u64``, at most :data:`MAX_COUNTER_SLOTS` entries) is
  read generically and its non-zero slots shown as ``<map>[<slot>]``;
* **plugin details**: each plugin that implements ``nkframe_endpoint_report`` gives facts about
  what it built for the endpoint (the VM plugin: placement, XSKMAP, steering) and problems,
  which join the endpoint's;
* programs on node devices (the uplink) from the kernel's own per-device query, so programs
  that nkframe did not attach are visible too.

Anything that cannot be read becomes a line in ``problems`` instead of an exception: status is
what an operator runs when something is already wrong.
"""

from __future__ import annotations

import errno
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import attrs

from nkframe.engine.reports import plugin_counters, plugin_reports
from nkframe.errors import InvalidSpec, KernelError, NkframeError
from nkframe.types import AttachedProgram, DeviceMode, Endpoint, Mechanism
from nkframe.uapi import (
    BPF_MAP_TYPE_ARRAY,
    BPF_MAP_TYPE_PERCPU_ARRAY,
)

log = logging.getLogger(__name__)

MAX_COUNTER_SLOTS = 64
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"

_LINK_FIELDS = ("rx_packets", "rx_bytes", "rx_dropped", "rx_errors", "tx_packets", "tx_bytes", "tx_dropped", "tx_errors")


# ----------------------------------------------------------------------------------------------
# value types
# ----------------------------------------------------------------------------------------------


@attrs.frozen
class LinkCounters:
    """A device's own statistics (``IFLA_STATS64``), as its driver and the stack count them."""

    rx_packets: int = 0
    rx_bytes: int = 0
    rx_dropped: int = 0
    rx_errors: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_dropped: int = 0
    tx_errors: int = 0

    @classmethod
    def from_stats64(cls, stats: Mapping[str, int]) -> "LinkCounters":
        return cls(**{f: int(stats.get(f, 0) or 0) for f in _LINK_FIELDS})


@attrs.frozen
class DeviceEnd:
    """One end of an endpoint's device pair (or a node device), read over rtnetlink."""

    name: str
    netns: str | None  # None: the caller's namespace
    ifindex: int
    kind: str | None
    up: bool
    counters: LinkCounters


@attrs.frozen
class ProgramStatus:
    """One attached program with the kernel's run statistics for it."""

    name: str
    hook: str  # endpoint hook (from-pod/to-pod) or device hook (ingress/egress); the direction when it maps to none
    mechanism: Mechanism
    position: int  # place in the chain, 1 = runs first
    prog_id: int
    link_id: int = 0
    tc_priority: int = 0
    run_cnt: int | None = None  # None: the program could not be read
    run_time_ns: int | None = None
    attached: bool = True  # False: the pin holds a link the device no longer has, or its device is gone
    nkframe: bool = True  # False: on the device, but not attached by nkframe
    direction: str = ""  # the mechanism's own word (netkit primary/peer, tcx/tc ingress/egress)


@attrs.frozen
class EndpointStatus:
    id: str
    netns: str
    device_kind: str
    mode: str
    addresses: tuple[str, ...]
    node_ifname: str
    pod_ifname: str
    attach: Mapping[str, str] = attrs.field(factory=dict, converter=dict)  # hook -> mechanism
    programs: tuple[ProgramStatus, ...] = ()
    node: DeviceEnd | None = None
    pod: DeviceEnd | None = None
    # source (plugin name, or "maps" for the generic reader) -> counter name -> value
    counters: Mapping[str, Mapping[str, int]] = attrs.field(factory=dict, converter=dict)
    problems: tuple[str, ...] = ()
    # A VM endpoint's leases as the kernel holds them (LeaseInfo)
    leases: tuple = ()
    # plugin name -> fact -> value (nkframe_endpoint_report: the VM plugin's placement...)
    details: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict, converter=dict)


@attrs.frozen
class DeviceStatus:
    """A node device nkframe attached programs to (the uplink)."""

    name: str
    device: DeviceEnd | None
    programs: tuple[ProgramStatus, ...] = ()
    problems: tuple[str, ...] = ()


@attrs.frozen
class NodeStatus:
    node_netns: str | None
    bpffs_root: str
    bpf_stats: bool  # the kernel.bpf_stats_enabled sysctl
    endpoints: tuple[EndpointStatus, ...] = ()
    devices: tuple[DeviceStatus, ...] = ()

    @property
    def problems(self) -> list[str]:
        out = [f"{e.id}: {p}" for e in self.endpoints for p in e.problems]
        out += [f"{d.name}: {p}" for d in self.devices for p in d.problems]
        return out


# ----------------------------------------------------------------------------------------------
# gathering
# ----------------------------------------------------------------------------------------------


def gather(engine, endpoint_ids: Iterable[str] | None = None) -> NodeStatus:
    """Read the status of every endpoint (or only ``endpoint_ids``) and node device of ``engine``.

    :raises nkframe.errors.EndpointNotFound: an id in ``endpoint_ids`` does not exist.
    """
    if endpoint_ids is None:
        eps = engine.endpoints()
    else:
        eps = [engine.get_endpoint(i) for i in endpoint_ids]
    endpoints = tuple(endpoint_status(engine, ep) for ep in eps)
    devices = tuple(device_status(engine, name) for name in device_names(engine)) if endpoint_ids is None else ()
    return NodeStatus(
        node_netns=engine.node_netns,
        bpffs_root=str(engine.layout.root),
        bpf_stats=bpf_stats_enabled(),
        endpoints=endpoints,
        devices=devices,
    )


def _identity(ep: Endpoint) -> dict:
    """The EndpointStatus fields every kind of endpoint fills the same way."""
    spec = ep.spec
    return {"id": ep.id, "netns": spec.netns, "device_kind": str(ep.device_kind), "mode": spec.mode.value,
            "addresses": tuple(str(a) for a in spec.addresses), "pod_ifname": spec.ifname}


def _single_status(engine, ep: Endpoint, problems: list[str]) -> EndpointStatus:
    """A VM endpoint: one netkit single device in the pod, its leases, no programs."""
    spec = ep.spec
    pod = _device_end(spec.ifname, spec.netns, problems, "netkit single device")
    for want in ep.unheld_leases:
        problems.append(f"lease {want} is not held by {spec.ifname}; run 'nkframe reconcile'")
    return EndpointStatus(
        **_identity(ep),
        node_ifname="",
        pod=pod,
        # plugins' counters (the VM plugin's steering on the leasing NIC)
        counters=plugin_counters(engine, ep, problems),
        details=plugin_reports(engine, ep, problems),
        problems=tuple(problems),
        leases=ep.leases,
    )


def endpoint_status(engine, ep: Endpoint) -> EndpointStatus:
    spec = ep.spec
    problems: list[str] = []
    if spec.single:
        return _single_status(engine, ep, problems)
    node = _device_end(spec.node_ifname, engine.node_netns, problems, "node-side device")
    pod = _device_end(spec.ifname, spec.netns, problems, "pod-side device")
    programs = _chain_status(ep.programs)
    for p in programs:
        if not p.attached:
            problems.append(f"program {p.name} ({p.hook}): its pin is no longer attached to the device (a link the device dropped, or the device is gone); run 'nkframe reconcile'")
    if node is not None:
        programs += _foreign(engine, node, ep.programs)
        for p in programs:
            if not p.nkframe:
                problems.append(f"program {p.name} #{p.prog_id} ({p.mechanism} {p.hook}) is on {spec.node_ifname} but was not attached by nkframe")
    # A datapath plugin claims the modes it forwards (nkframe_datapath_program).  Engines whose
    # plugins claim none (test and third-party chains without a datapath) are not judged.
    want = engine.datapath_program(spec.mode.value)
    claimed = [m.value for m in DeviceMode if engine.datapath_program(m.value)]
    if want is None and claimed:
        problems.append(f"no loaded plugin forwards mode {spec.mode.value} endpoints (only {', '.join(claimed)}): "
                        f"this one has a device and no datapath")
    elif want is not None and not any(p.name == want for p in ep.programs):
        problems.append(f"its {spec.mode.value} datapath program {want} is not attached: the pod has no forwarding "
                        f"(the endpoint was added without that plugin; remove and add it again with the plugin loaded)")
    counters: dict[str, dict[str, int]] = {}
    counters.update(plugin_counters(engine, ep, problems))
    generic = map_counters(engine.layout.endpoint_dir(ep.id) / "maps", problems)
    if generic:
        counters["maps"] = generic
    details = plugin_reports(engine, ep, problems)
    return EndpointStatus(
        **_identity(ep),
        node_ifname=spec.node_ifname,
        attach={h: str(m) for h, m in sorted(ep.mechanism.items())},
        programs=programs,
        node=node,
        pod=pod,
        counters=counters,
        problems=tuple(problems),
        details=details,
    )


def device_names(engine) -> list[str]:
    """Node devices with nkframe pins (``<root>/devices/<dev>``), plus the engine's uplink."""
    names = set()
    d = engine.layout.root / "devices"
    if d.is_dir():
        names.update(p.name for p in d.iterdir() if p.is_dir())
    if getattr(engine, "uplink", None):
        names.add(engine.uplink)
    return sorted(names)


def device_status(engine, name: str) -> DeviceStatus:
    from nkframe.engine import list_attached

    problems: list[str] = []
    dev = _device_end(name, engine.node_netns, problems, "device")
    programs: tuple[ProgramStatus, ...] = ()
    if dev is not None:
        try:
            progs = list_attached(dev.ifindex, netns_name=engine.node_netns, netkit=dev.kind == "netkit")
        except NkframeError as e:
            problems.append(f"cannot list its programs: {e}")
            progs = []
        # The kernel knows a program by its function name; nkframe by the name its plugin gave
        # it, which is in the pin.  Programs without a pin of ours are someone else's.
        pinned = _pinned_programs(engine.layout.device_dir(name))
        programs = tuple(
            attrs.evolve(p, name=pinned.get(p.prog_id, p.name), nkframe=p.prog_id in pinned)
            for p in _chain_status(progs, device=True)
        )
    return DeviceStatus(name=name, device=dev, programs=programs, problems=tuple(problems))


def _device_end(name: str, ns: str | None, problems: list[str], what: str) -> DeviceEnd | None:
    from nkframe.netlink import links

    try:
        try:
            msg = links.get_raw_link(name, ns)
        except KernelError as e:
            if e.errno != errno.ENODEV:
                raise
            problems.append(f"{what} {name} is missing in {ns or 'the current namespace'}")
            return None
        st = links.LinkState.from_msg(msg, ns)
        return DeviceEnd(
            name=name, netns=ns, ifindex=st.ifindex, kind=st.kind, up=st.up,
            counters=LinkCounters.from_stats64(msg.stats64()),
        )
    except NkframeError as e:
        problems.append(f"{what} {name}: {e}")
        return None


def _chain_status(progs: Iterable[AttachedProgram], *, device: bool = False) -> tuple[ProgramStatus, ...]:
    """Status rows in chain order; a program the kernel listed (no hook of nkframe's) gets the
    hook its direction serves on an endpoint (or, ``device``, on a node device)."""
    out = []
    pos: dict[tuple, int] = {}
    for p in progs:
        hook = p.hook or _hook_of(p, device)
        key = (hook, p.mechanism)
        pos[key] = pos.get(key, 0) + 1
        cnt, ns = prog_run_stats(p.prog_id)
        out.append(
            ProgramStatus(
                name=p.name, hook=hook, direction=p.direction, mechanism=p.mechanism, position=pos[key],
                prog_id=p.prog_id, link_id=p.link_id, tc_priority=p.tc_priority, run_cnt=cnt, run_time_ns=ns,
                # A TCX/netkit link whose device went away reports ifindex 0 (the link is
                # "defunct" but its pin keeps it alive); a TC pin's device is the endpoint's.
                attached=p.ifindex != 0,
            )
        )
    return tuple(out)


def _hook_of(p: AttachedProgram, device: bool) -> str:
    from nkframe.attach import hook_for

    try:
        return str(hook_for(p.mechanism, p.direction, device=device))
    except InvalidSpec:  # a direction with no hook point (netkit's on a device): keep the kernel's word
        return p.direction


def _foreign(engine, node: DeviceEnd, ours: Iterable[AttachedProgram]) -> tuple[ProgramStatus, ...]:
    """Programs the kernel runs on the node-side device that are not among the endpoint's pins."""
    from nkframe.engine import list_attached

    try:
        on_device = list_attached(node.ifindex, netns_name=node.netns, netkit=node.kind == "netkit")
    except NkframeError as e:
        log.warning("cannot list programs on %s: %s", node.name, e)
        return ()
    known = {p.prog_id for p in ours}
    foreign = [p for p in on_device if p.prog_id not in known]
    return tuple(attrs.evolve(s, nkframe=False) for s in _chain_status(foreign))


def _pinned_programs(base: Path) -> dict[int, str]:
    """prog id -> program name for every link or program pinned under ``base``."""
    from nkframe import bpf
    from nkframe.pins import parse_pin_name

    ids: dict[int, str] = {}
    if not base.is_dir():
        return ids
    for path in base.rglob("*"):
        if path.is_dir():
            continue
        try:
            kind = bpf.pin_type(path)
            if kind == "link":
                with bpf.Link.from_pin(path) as link:
                    pid = link.info().prog_id
            elif kind == "prog":
                with bpf.Program.from_pin(path) as prog:
                    pid = prog.id
            else:
                continue
            ids[pid] = parse_pin_name(path)[1]
        except (NkframeError, ValueError):
            continue
    return ids


# ----------------------------------------------------------------------------------------------
# counters
# ----------------------------------------------------------------------------------------------


def bpf_stats_enabled() -> bool:
    """The ``kernel.bpf_stats_enabled`` sysctl (a ``BPF_ENABLE_STATS`` fd is not visible here)."""
    try:
        with open(STATS_SYSCTL) as f:
            return f.read().strip() not in ("", "0")
    except OSError:
        return False


_FDINFO_RE = re.compile(r"^(run_time_ns|run_cnt):\s*(\d+)", re.M)


def prog_run_stats(prog_id: int) -> tuple[int | None, int | None]:
    """``(run_cnt, run_time_ns)`` of a program, or ``(None, None)`` if it cannot be opened.

    The kernel prints both in the fdinfo of a program fd (Linux 5.1+); they only move while BPF
    statistics are enabled.
    """
    from nkframe import bpf

    try:
        prog = bpf.Program.from_id(prog_id)
    except NkframeError:
        return None, None
    try:
        with open(f"/proc/self/fdinfo/{prog.fd}") as f:
            text = f.read()
    except OSError:
        return None, None
    finally:
        prog.close()
    found = dict(_FDINFO_RE.findall(text))
    if not found:
        return None, None
    return int(found.get("run_cnt", 0)), int(found.get("run_time_ns", 0))


def map_counters(maps_dir: Path, problems: list[str] | None = None) -> dict[str, int]:
    """Non-zero slots of every counter-shaped map pinned in ``maps_dir``: ``{"counts[0]": 12}``.

    Counter-shaped: an ``ARRAY`` or ``PERCPU_ARRAY`` with ``u64`` values and at most
    :data:`MAX_COUNTER_SLOTS` entries (per-CPU values are summed).  Other maps are skipped: their
    values mean something only to the plugin that owns them.
    """
    from nkframe import bpf

    out: dict[str, int] = {}
    if not maps_dir.is_dir():
        return out
    for path in sorted(maps_dir.iterdir()):
        try:
            with bpf.Map.from_pin(path) as m:
                if m.type not in (BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY):
                    continue
                if m.value_size != 8 or m.key_size != 4 or m.max_entries > MAX_COUNTER_SLOTS:
                    continue
                for slot in range(m.max_entries):
                    key = slot.to_bytes(4, "little")
                    if m.is_percpu:
                        vals = m.lookup_percpu(key) or []
                        total = sum(int.from_bytes(v[:8], "little") for v in vals)
                    else:
                        v = m.lookup(key)
                        total = int.from_bytes(v[:8], "little") if v else 0
                    if total:
                        out[f"{path.name}[{slot}]"] = total
        except NkframeError as e:
            if problems is not None:
                problems.append(f"map {path.name}: unreadable ({e})")
    return out


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------


def to_dict(st: NodeStatus) -> dict[str, Any]:
    """A JSON-ready document; keys and order are stable (scripts read ``nkframe status --json``)."""

    def end(d: DeviceEnd | None):
        if d is None:
            return None
        return {"name": d.name, "netns": d.netns, "ifindex": d.ifindex, "kind": d.kind, "up": d.up, "counters": attrs.asdict(d.counters)}

    def prog(p: ProgramStatus):
        return {
            "name": p.name, "hook": p.hook, "direction": p.direction, "mechanism": str(p.mechanism), "position": p.position,
            "prog_id": p.prog_id, "link_id": p.link_id, "tc_priority": p.tc_priority,
            "run_cnt": p.run_cnt, "run_time_ns": p.run_time_ns, "attached": p.attached, "nkframe": p.nkframe,
        }

    return {
        "node_netns": st.node_netns,
        "bpffs_root": st.bpffs_root,
        "bpf_stats": st.bpf_stats,
        "endpoints": [
            {
                "id": e.id, "netns": e.netns, "device_kind": e.device_kind, "mode": e.mode,
                "addresses": list(e.addresses), "node_ifname": e.node_ifname, "pod_ifname": e.pod_ifname,
                "attach": dict(e.attach), "programs": [prog(p) for p in e.programs],
                "node": end(e.node), "pod": end(e.pod),
                "counters": {k: dict(v) for k, v in e.counters.items()},
                "problems": list(e.problems),
                "leases": [attrs.asdict(x) for x in e.leases],
                "details": {k: dict(v) for k, v in e.details.items()},
            }
            for e in st.endpoints
        ],
        "devices": [
            {"name": d.name, "device": end(d.device), "programs": [prog(p) for p in d.programs], "problems": list(d.problems)}
            for d in st.devices
        ],
        "problems": st.problems,
    }


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n = n / 1000
    return str(n)  # pragma: no cover


def lease_text(x) -> str:
    """A LeaseInfo for people: ``queue 1 <- eth1:3``."""
    return f"queue {x.queue} <- {x.uplink or f'ifindex {x.uplink_ifindex}'}:{x.uplink_queue}"


def _device_cell(e: EndpointStatus) -> str:
    if e.device_kind == "netkit-single":  # one device, in the pod
        return f"{e.device_kind} {e.pod_ifname}" + (f"#{e.pod.ifindex}" if e.pod else " (missing)")
    return f"{e.device_kind} {e.node_ifname}" + (f"#{e.node.ifindex}" if e.node else " (missing)")


def tables(st: NodeStatus) -> list[tuple[str, list[str], list[list[str]]]]:
    """The status as ``(title, columns, rows)`` tables, for a terminal or plain text."""
    eps = (
        "endpoints",
        ["id", "netns", "device", "mode", "addresses", "attach"],
        [
            [
                e.id, e.netns, _device_cell(e), e.mode, " ".join(e.addresses) or "-",
                " ".join(f"{h}:{m}" for h, m in e.attach.items()) or ("; ".join(lease_text(x) for x in e.leases) if e.leases else "-"),
            ]
            for e in st.endpoints
        ],
    )
    stats_note = "" if st.bpf_stats else " (runs: kernel.bpf_stats_enabled is 0)"
    progs_rows = []
    for owner, plist in [(e.id, e.programs) for e in st.endpoints] + [(d.name, d.programs) for d in st.devices]:
        for p in plist:
            runs = "-" if p.run_cnt is None or (not st.bpf_stats and not p.run_cnt) else _human(p.run_cnt)
            avg = "-" if not p.run_cnt else f"{p.run_time_ns / p.run_cnt:.0f}"
            flags = ("" if p.attached else "DETACHED ") + ("" if p.nkframe else "FOREIGN")
            link = str(p.link_id) if p.link_id else (f"prio {p.tc_priority}" if p.tc_priority else "-")
            progs_rows.append([owner, p.hook, str(p.mechanism), str(p.position), p.name, str(p.prog_id), link, runs, avg, flags.strip()])
    progs = ("programs" + stats_note, ["on", "hook", "mechanism", "#", "program", "prog id", "link", "runs", "ns/run", "note"], progs_rows)
    ctr_rows = []
    for e in st.endpoints:
        for side, d in (("node", e.node), ("pod", e.pod)):
            if d is None:
                continue
            c = d.counters
            ctr_rows.append([
                e.id, f"{side} {d.name}", _human(c.rx_packets), _human(c.rx_bytes), _human(c.rx_dropped),
                _human(c.tx_packets), _human(c.tx_bytes), _human(c.tx_dropped),
            ])
    for d in st.devices:
        if d.device is not None:
            c = d.device.counters
            ctr_rows.append([d.name, "node device", _human(c.rx_packets), _human(c.rx_bytes), _human(c.rx_dropped),
                             _human(c.tx_packets), _human(c.tx_bytes), _human(c.tx_dropped)])
    ctrs = ("interface counters", ["on", "device", "rx pkts", "rx bytes", "rx drop", "tx pkts", "tx bytes", "tx drop"], ctr_rows)
    plug_rows = [
        [e.id, source, name, str(value)]
        for e in st.endpoints
        for source, values in e.counters.items()
        for name, value in values.items()
    ]
    plug = ("program counters", ["endpoint", "from", "counter", "value"], plug_rows)
    detail_rows = [
        [e.id, source, name, value]
        for e in st.endpoints
        for source, facts in e.details.items()
        for name, value in facts.items()
    ]
    details = ("plugin details", ["endpoint", "from", "fact", "value"], detail_rows)
    return [eps, progs, ctrs, plug, details]


def plain(title: str, columns: list[str], rows: list[list[str]]) -> str:
    """A table as aligned plain text: no colours or box drawing, stable for pipes and diffs."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines = [f"# {title}", "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def render(st: NodeStatus, console=None, *, terminal: bool | None = None) -> str | None:
    """Print the status: rich tables on a terminal, :func:`plain` text otherwise (returned)."""
    if terminal is None:
        terminal = bool(console is not None and console.is_terminal)
    parts = tables(st)
    if not terminal:
        text = "\n\n".join(plain(*t) for t in parts if t[2] or t[0] == "endpoints")
        if st.problems:
            text += "\n\n# problems\n" + "\n".join(st.problems)
        return text
    from rich.table import Table

    for title, cols, rows in parts:
        if not rows and title != "endpoints":
            continue
        t = Table(title=title, title_justify="left")
        for c in cols:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*r)
        console.print(t)
    for p in st.problems:
        console.print(f"[yellow]problem[/]: {p}")
    return None
