"""The VM endpoint's leased-queue placement: a netkit single device in the pod holding physical
queues of a NIC (netdev ``queue-create``, Linux 7.1+), steered by native XDP on that NIC.

QEMU's sockets bind to the netkit device's leased queues and sit in the endpoint's own XSKMAP at
the netkit queue id (libxdp's ``xsk_socket__update_xskmap`` uses the socket's queue as the key).
The NIC's program (``bpf/vm_lease.c``) sees the *physical* queue, so it keeps two tables keyed
by physical queue: the XSKMAP of the endpoint leasing it (an ARRAY_OF_MAPS: every endpoint's
XSKMAP has :data:`XSK_SLOTS` entries, as the kernel compares an inner XSKMAP's size with the
template's) and the netkit queue id plus the VM's MAC.  The kernel delivers a frame redirected
from physical queue P to the socket bound to the netkit queue leasing P (Debian 7.3.4, copy
mode; tests/host/test_netlink_lease.py).

One program per NIC, shared by every VM endpoint leasing one of its queues, pinned under
``pins.Layout.node_plugin_dir("vm", NIC)``:

* ``vm_lease_xsks``  physical queue -> endpoint XSKMAP;
* ``vm_lease_slots`` physical queue -> (netkit queue id, VM MAC);
* ``vm_lease_stats`` per-CPU counters, ``P * 3 + stat`` (:data:`steer.STATS`);
* ``link``           the XDP link (native mode) on the NIC.

Its users are the table entries that hold a live endpoint's XSKMAP: the directory (and with its
link pin, the program) goes when the last of them is removed.  Everything is in bpffs, so an
agent restart finds it as it was.
"""

from __future__ import annotations

import errno
import struct
from pathlib import Path

from nkframe import bpf, netns, objects, pins
from nkframe.errors import InvalidSpec, KernelError, NkframeError
from nkframe.types import EndpointSpec

PLUGIN = "vm"
OBJECT = PROGRAM = "vm_lease"
XSKS, SLOTS, STATS_MAP, LINK = "vm_lease_xsks", "vm_lease_slots", "vm_lease_stats", "link"
TABLE_QUEUES = 256  # NK_VM_LEASE_QUEUES in bpf/vm_lease.c
XSK_SLOTS = 65  # NK_VM_XSK_SLOTS: netkit queue 0 and up to 64 leased queues
NSTATS = 3  # VM_STAT_MAX
PLACEMENT = "leased-queue-copy"


def _u32(v: int) -> bytes:
    return struct.pack("<I", v)


def nic_dir(bpffs_root: str, uplink: str) -> Path:
    return pins.Layout(bpffs_root).node_plugin_dir(PLUGIN, uplink)


def uplink_of(spec: EndpointSpec) -> str:
    return spec.leases[0].uplink


def held(spec: EndpointSpec, node_netns: str | None, ifindex: int) -> list[tuple[int, int]]:
    """(netkit queue id, physical queue) of every lease the kernel reports held by the pod's
    device ``ifindex`` (Linux 7.3 reports a lease only from the physical side)."""
    from nkframe.netlink import netdev

    with netns.ipr(node_netns) as ipr:
        nsid = netns.netns_id(ipr, spec.netns)
    with netdev.NetdevFamily(node_netns) as fam:
        return [(vq, q.id) for vq, q in fam.leases_held_by(ifindex, nsid)]


def _program(bpffs_root: str, node_netns: str | None, uplink: str) -> Path:
    """The NIC's program, attached and pinned: the one already there, or a new one."""
    from nkframe.netlink import links

    d = nic_dir(bpffs_root, uplink)
    if (d / LINK).exists():
        try:
            with bpf.Link.from_pin(d / LINK) as link:
                if link.info().ifindex:
                    return d
        except KernelError:
            pass
        pins.remove_tree(d)  # its device went (and took the netkit devices leasing from it)
    ifindex = links.ifindex(uplink, node_netns)
    d.mkdir(parents=True)
    try:
        with bpf.BpfObject.open(objects.path(OBJECT)) as obj:
            obj.load()
            for name in (XSKS, SLOTS, STATS_MAP):
                obj.maps[name].pin(d / name)
            with netns.enter(node_netns):
                link = bpf.Link.create(obj.programs[PROGRAM].fd, ifindex, bpf.BPF_XDP,
                                       flags=bpf.XDP_FLAGS_DRV_MODE)
            with link:
                link.pin(d / LINK)
    except BaseException:
        pins.remove_tree(d)
        raise
    return d


def attach(ctx, xskmap: str, mac: str, queues: int) -> None:
    """Create the endpoint's XSKMAP (pinned at ``xskmap``), make sure the NIC's program is there
    and point the NIC's tables for the endpoint's physical queues at it; on ``ctx.undo``."""
    spec, dev = ctx.spec, ctx.device
    leases = held(spec, ctx.node_netns, dev.pod_ifindex)
    if len(leases) != len(spec.leases):
        raise NkframeError(f"endpoint {spec.id}: the kernel reports {len(leases)} of its "
                           f"{len(spec.leases)} leases held by {spec.ifname}")
    vqs = sorted(vq for vq, _ in leases)
    if vqs != list(range(vqs[0], vqs[0] + queues)):
        raise NkframeError(f"endpoint {spec.id}: leased netkit queues {vqs} are not consecutive "
                           "(QEMU binds queues start-queue..start-queue+queues-1)")
    for _, pq in leases:
        if pq >= TABLE_QUEUES:
            raise InvalidSpec(f"endpoint {spec.id}: physical queue {pq} is past the {TABLE_QUEUES} "
                              "queues the leased-queue steering covers")
    from nkframe.uapi import BPF_MAP_TYPE_XSKMAP

    with bpf.Map.create(BPF_MAP_TYPE_XSKMAP, 4, 4, XSK_SLOTS, name="vm_xsks") as m:
        m.pin(xskmap)
        uplink = uplink_of(spec)
        ctx.undo.push(f"release the leased-queue steering of {spec.id} on {uplink}",
                      lambda: release(ctx.bpffs_root, spec))
        d = _program(ctx.bpffs_root, ctx.node_netns, uplink)
        mac_b = bytes(int(x, 16) for x in mac.split(":"))
        with bpf.Map.from_pin(d / SLOTS) as slots, bpf.Map.from_pin(d / XSKS) as xsks:
            for vq, pq in leases:
                slots.update(_u32(pq), struct.pack("<I6s2x", vq, mac_b))
                xsks.update(_u32(pq), _u32(m.fd))


def _live_xskmaps(bpffs_root: str, exclude: str) -> set[int]:
    """Map ids of every endpoint's pinned XSKMAP but ``exclude``'s."""
    layout = pins.Layout(bpffs_root)
    out = set()
    for eid in layout.endpoint_ids():
        p = layout.plugin_dir(eid, PLUGIN) / "vm_xsks"
        if eid == exclude or not p.exists():
            continue
        try:
            with bpf.Map.from_pin(p) as m:
                out.add(m.id)
        except KernelError:
            continue
    return out


def release(bpffs_root: str, spec: EndpointSpec) -> None:
    """Take the endpoint out of its NIC's tables (entries that hold no live endpoint's XSKMAP
    go with it) and remove the NIC's program when no endpoint uses it any more."""
    if not spec.leases:
        return
    d = nic_dir(bpffs_root, uplink_of(spec))
    if not (d / XSKS).exists():
        if d.exists():
            _remove(d)
        return
    live = _live_xskmaps(bpffs_root, spec.id)
    used = False
    with bpf.Map.from_pin(d / XSKS) as xsks, bpf.Map.from_pin(d / SLOTS) as slots:
        for q in range(xsks.max_entries):
            v = xsks.lookup(_u32(q))
            if v is None:
                continue
            if struct.unpack("<I", v)[0] in live:
                used = True
                continue
            xsks.delete(_u32(q))
            slots.update(_u32(q), bytes(12))
    if not used:
        _remove(d)


def _remove(d: Path) -> None:
    """Remove a NIC's directory (its link pin: the program is detached) and the parents it
    leaves empty, up to ``<root>/plugins``."""
    pins.remove_tree(d)
    for parent in (d.parent, d.parent.parent, d.parent.parent.parent):
        try:
            parent.rmdir()
        except OSError:
            break


def read(bpffs_root: str, spec: EndpointSpec, xskmap: str) -> tuple[bool, int | None, int | None, int | None, str | None]:
    """(attached, prog_id, NIC ifindex, first netkit queue, problem) of the endpoint's steering."""
    d = nic_dir(bpffs_root, uplink_of(spec))
    try:
        with bpf.Link.from_pin(d / LINK) as link:
            info = link.info()
    except KernelError as e:
        return False, None, None, None, (
            f"the leased-queue steering link on {uplink_of(spec)} is not pinned"
            if e.errno == errno.ENOENT else f"the steering link cannot be opened: {e}")
    if not info.ifindex:
        return False, info.prog_id, None, None, f"the steering link's device {uplink_of(spec)} is gone"
    try:
        with bpf.Map.from_pin(xskmap) as m:
            mine = m.id
    except KernelError:
        return False, info.prog_id, info.ifindex, None, f"the XSKMAP pin {xskmap} is missing"
    keys = []
    with bpf.Map.from_pin(d / XSKS) as xsks, bpf.Map.from_pin(d / SLOTS) as slots:
        for lease in spec.leases:
            v = xsks.lookup(_u32(lease.queue))
            if v is None or struct.unpack("<I", v)[0] != mine:
                return (False, info.prog_id, info.ifindex, None,
                        f"queue {lease.queue} of {lease.uplink} is not steered to this endpoint")
            keys.append(struct.unpack("<I", slots.lookup(_u32(lease.queue))[:4])[0])
    return True, info.prog_id, info.ifindex, min(keys), None


def counters(bpffs_root: str, spec: EndpointSpec, names: tuple[str, ...]) -> dict[str, int] | None:
    """The endpoint's counters: the NIC program's, summed over the endpoint's physical queues."""
    path = nic_dir(bpffs_root, uplink_of(spec)) / STATS_MAP
    if not path.exists():
        return None
    out = dict.fromkeys(names, 0)
    with bpf.Map.from_pin(path) as m:
        for lease in spec.leases:
            for i, name in enumerate(names):
                per_cpu = m.lookup_percpu(_u32(lease.queue * NSTATS + i)) or []
                out[name] += sum(struct.unpack("<Q", v[:8])[0] for v in per_cpu)
    return out
