"""A picture of a node: what is attached where, as Graphviz DOT (and SVG/PNG through ``dot``).

The graph follows packets rather than objects.  Each endpoint is drawn as its pod namespace
(the pod-side device and its addresses) and the node-side device, joined by the two program
chains packets cross on the way::

    node nk3f1c2a9b07 ◀── [from-pod chain: 1 policy, 2 fwd] ◀── pod eth0
    node nk3f1c2a9b07 ──▶ [to-pod chain:   1 count]         ──▶ pod eth0

Node devices with programs (the uplink) are joined the same way to a "network" node by their
ingress and egress chains.  A chain lists programs in the order they run, with the mechanism
(netkit / tcx / tc), program ids and, when BPF statistics are on, run counts; programs the
kernel runs on a device that nkframe did not attach are marked ``foreign``, pinned links that
lost their device ``detached``.

DOT output needs nothing but this module and is byte-for-byte stable for the same input (ids
are derived from names, everything is sorted), so it can be diffed and kept in version control.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path

from nkframe.errors import InvalidSpec, NkframeError, NotSupported
from nkframe.status import DeviceEnd, EndpointStatus, NodeStatus, ProgramStatus

FORMATS = ("dot", "svg", "png")
_HOOK_ORDER = {"from-pod": 0, "to-pod": 1, "ingress": 0, "egress": 1}


def _id(*parts: str) -> str:
    """A quoted DOT id.  Inside quotes only '"' and '\\' need escaping."""
    raw = ":".join(parts)
    return '"' + raw.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _h(text: object) -> str:
    return html.escape(str(text), quote=True)


def _runs(p: ProgramStatus, stats: bool) -> str:
    if p.run_cnt is None or (not stats and not p.run_cnt):
        return ""
    return f" · {p.run_cnt} runs"


def _chain_label(title: str, progs: list[ProgramStatus], stats: bool) -> str:
    rows = [f'<TR><TD ALIGN="LEFT" BGCOLOR="#dde8f5"><B>{_h(title)}</B></TD></TR>']
    if not progs:
        rows.append('<TR><TD ALIGN="LEFT"><I>no programs</I></TD></TR>')
    for p in progs:
        note = ""
        colour = ""
        if not p.nkframe:
            note, colour = " · foreign", ' BGCOLOR="#f7d4d4"'
        elif not p.attached:
            note, colour = " · detached", ' BGCOLOR="#e0e0e0"'
        where = f"link {p.link_id}" if p.link_id else (f"prio {p.tc_priority}" if p.tc_priority else "")
        rows.append(
            f'<TR><TD ALIGN="LEFT"{colour}>{p.position}. <B>{_h(p.name)}</B> '
            f'<FONT POINT-SIZE="9">#{p.prog_id}{(" · " + _h(where)) if where else ""}{_h(_runs(p, stats))}{_h(note)}</FONT></TD></TR>'
        )
    return '<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="4">' + "".join(rows) + "</TABLE>>"


def _device_label(title: str, d: DeviceEnd | None, name: str, extra: list[str]) -> str:
    lines = [f"<B>{_h(name)}</B>"]
    if d is None:
        lines.append("<I>missing</I>")
    else:
        lines.append(f'<FONT POINT-SIZE="9">{_h(d.kind or "device")} · ifindex {d.ifindex}{"" if d.up else " · down"}</FONT>')
        c = d.counters
        lines.append(f'<FONT POINT-SIZE="9">rx {c.rx_packets} pkts ({c.rx_dropped} drop) · tx {c.tx_packets} pkts ({c.tx_dropped} drop)</FONT>')
    lines += [f'<FONT POINT-SIZE="9">{_h(x)}</FONT>' for x in extra]
    lines.insert(0, f'<FONT POINT-SIZE="9">{_h(title)}</FONT>')
    return "<" + "<BR/>".join(lines) + ">"


def _by_hook(progs: tuple[ProgramStatus, ...], hooks: tuple[str, ...]) -> dict[str, list[ProgramStatus]]:
    out: dict[str, list[ProgramStatus]] = {h: [] for h in hooks}
    for p in progs:
        out.setdefault(p.hook, []).append(p)
    for h in out:
        out[h].sort(key=lambda p: (not p.nkframe, p.position, p.name))
    return dict(sorted(out.items(), key=lambda kv: (_HOOK_ORDER.get(kv[0], 9), kv[0])))


def _mechs(progs: list[ProgramStatus], fallback: str = "") -> str:
    ms = sorted({str(p.mechanism) for p in progs if p.nkframe})
    return "/".join(ms) or fallback


def to_dot(st: NodeStatus, *, title: str | None = None) -> str:
    """The node as a DOT digraph (a string ending in a newline)."""
    out: list[str] = []
    w = out.append
    node_ns = st.node_netns or "current namespace"
    w("digraph nkframe {")
    w(f"  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=11, labelloc=t, label={_id(title or f'nkframe node: {node_ns} · bpffs {st.bpffs_root}')}];")
    w('  node [fontname="Helvetica", fontsize=10];')
    w('  edge [fontname="Helvetica", fontsize=9];')

    endpoints = sorted(st.endpoints, key=lambda e: e.id)
    devices = sorted(st.devices, key=lambda d: d.name)

    # The node namespace: node-side devices and the uplink.
    w(f"  subgraph {_id('cluster', 'node')} {{")
    w(f"    label={_id('node netns ' + node_ns)}; style=rounded; color=\"#4a6fa5\";")
    for e in endpoints:
        if e.device_kind == "netkit-single":
            continue  # one device, in the pod: nothing on the node side
        extra = [f"{e.device_kind} pair, {e.mode}"]
        w(f"    {_id('dev', e.id)} [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fa\", label={_device_label('node side of ' + e.id, e.node, e.node_ifname, extra)}];")
    for d in devices:
        w(f"    {_id('ndev', d.name)} [shape=box, style=\"rounded,filled\", fillcolor=\"#fdf1dc\", label={_device_label('node device (uplink)', d.device, d.name, [])}];")
    # Physical devices that lend queues to VM endpoints and carry no programs of ours.
    sources = sorted({x.uplink or f"ifindex {x.uplink_ifindex}" for e in endpoints for x in e.leases}
                     - {d.name for d in devices})
    for name in sources:
        w(f"    {_id('ndev', name)} [shape=box, style=\"rounded,filled\", fillcolor=\"#fdf1dc\", label={_id(name + ' (lease source)')}];")
    w("  }")

    if devices:
        w(f"  {_id('network')} [shape=ellipse, style=dashed, label=\"network\"];")

    for e in endpoints:
        _endpoint(w, e, st.bpf_stats)
    for d in devices:
        _device(w, d, st.bpf_stats)
    w("}")
    return "\n".join(out) + "\n"


def _endpoint(w, e: EndpointStatus, stats: bool) -> None:
    pod_extra = list(e.addresses) or ["no addresses"]
    single = e.device_kind == "netkit-single"
    if single:
        pod_extra = [f"netkit single, {e.mode}", *pod_extra]
    w(f"  subgraph {_id('cluster', 'pod', e.id)} {{")
    w(f"    label={_id(f'pod {e.id} · netns {e.netns}')}; style=rounded; color=\"#5a9a5a\";")
    w(f"    {_id('pod', e.id)} [shape=box, style=\"rounded,filled\", fillcolor=\"#eef7ee\", label={_device_label('VM device' if single else 'pod side', e.pod, e.pod_ifname, pod_extra)}];")
    w("  }")
    for x in e.leases:
        src = x.uplink or f"ifindex {x.uplink_ifindex}"
        w(f"  {_id('ndev', src)} -> {_id('pod', e.id)} [style=bold, label={_id(f'rx queue {x.uplink_queue} leased as queue {x.queue}')}];")
    chains = _by_hook(e.programs, ("from-pod", "to-pod"))
    for hook, progs in chains.items():
        mech = e.attach.get(hook) or _mechs(progs, "none")
        cid = _id("chain", e.id, hook)
        w(f"  {cid} [shape=plaintext, label={_chain_label(f'{hook} · {mech}', progs, stats)}];")
        # Both chains sit between the node side (left) and the pod (right); a from-pod edge is
        # declared node -> pod like the other and drawn backwards, which keeps that layout.
        if hook == "to-pod":
            w(f"  {_id('dev', e.id)} -> {cid} -> {_id('pod', e.id)};")
        elif hook == "from-pod":
            w(f"  {_id('dev', e.id)} -> {cid} -> {_id('pod', e.id)} [dir=back];")
        else:  # a hook this module does not know: attach it to the node side
            w(f"  {cid} -> {_id('dev', e.id)} [style=dashed];")


def _device(w, d, stats: bool) -> None:
    chains = _by_hook(d.programs, ())
    if not chains:
        w(f"  {_id('network')} -> {_id('ndev', d.name)} [dir=both, label=\"no programs\"];")
    for hook, progs in chains.items():
        cid = _id("chain", "dev", d.name, hook)
        w(f"  {cid} [shape=plaintext, label={_chain_label(f'{d.name} {hook} · {_mechs(progs, chr(8211))}', progs, stats)}];")
        if hook == "egress":
            w(f"  {_id('ndev', d.name)} -> {cid} -> {_id('network')};")
        else:
            w(f"  {_id('network')} -> {cid} -> {_id('ndev', d.name)};")


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------


def dot_program() -> str | None:
    """Path of Graphviz's ``dot``, or None."""
    return shutil.which("dot")


def format_for(path: str | None, fmt: str | None) -> str:
    """The output format: ``fmt`` if given, else from the file suffix, else DOT."""
    if fmt:
        fmt = fmt.lower()
    elif path and path != "-":
        fmt = Path(path).suffix.lstrip(".").lower() or "dot"
        if fmt == "gv":
            fmt = "dot"
    else:
        fmt = "dot"
    if fmt not in FORMATS:
        raise InvalidSpec(f"graph format {fmt!r} is not one of: {', '.join(FORMATS)} (name the file .dot, .svg or .png, or pass --format)")
    return fmt


def render(dot_text: str, fmt: str, *, timeout: float = 60) -> bytes:
    """``dot_text`` as ``fmt`` bytes.  DOT needs nothing; SVG and PNG need Graphviz's ``dot``.

    :raises NotSupported: ``dot`` is not installed (the DOT text still works: render it elsewhere).
    :raises NkframeError: ``dot`` failed (exit code 4 from the CLI).
    """
    fmt = format_for(None, fmt)
    if fmt == "dot":
        return dot_text.encode()
    exe = dot_program()
    if exe is None:
        raise NotSupported(
            "graphviz",
            f"rendering {fmt.upper()} needs Graphviz's 'dot' program, which is not installed "
            "(Debian: apt-get install graphviz); '--format dot' works without it",
        )
    try:
        res = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise NkframeError(f"graphviz: dot -T{fmt} took longer than {timeout:.0f} s") from None
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip()
        raise NkframeError(f"graphviz: dot -T{fmt} exited {res.returncode}: {err}")
    return res.stdout
