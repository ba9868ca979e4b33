"""The VM steering program on an endpoint's pod-side device: options, attach, read back.

What is pinned, under ``pins.Layout.plugin_dir(endpoint, "vm")``:

* ``vm_xsks``  the XSKMAP QEMU fills (``map-path``): slot *q* holds the socket of queue *q*;
* ``vm_stats`` per-CPU counters of the steering program (:data:`STATS`);
* ``link``     the XDP link (native mode) of ``bpf/vm_steer.c`` on the pod-side device.

A VM endpoint on a netkit single device (leased queues) pins only ``vm_xsks`` there; its
steering is the NIC's shared program (:mod:`.lease`).

The engine removes the directory with the endpoint; its upgrades (policy changes, plugin
upgrades) never touch it, so a running VM keeps its sockets and its steering through them.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Mapping
from pathlib import Path

import attrs

from nkframe import bpf, netns, objects, pins
from nkframe.context import EndpointContext
from nkframe.errors import InvalidSpec, KernelError
from nkframe.types import DeviceKind, Endpoint, EndpointReport, EndpointSpec, Hook, ProgramSpec

from . import lease

PLUGIN = "vm"
OPTIONS_KEY = "vm"
OBJECT = "vm_steer"
PROGRAM = "vm_steer"
XSKMAP = "vm_xsks"
STATS_MAP = "vm_stats"
LINK = "link"
TO_POD_PROGRAM = "vm_to_pod"
TO_POD_ORDER = 900  # after policy (100): it only continues
MAX_QUEUES = 64  # NK_VM_MAX_QUEUES in bpf/vm_steer.c
#: vm_stats slots (enum vm_stat in bpf/vm_steer.c) -> counter names in ``nkframe status``.
STATS = ("to_socket", "no_socket", "runt")
ZERO_MAC = "00:00:00:00:00:00"

#: The placements: AF_XDP on the pod-side veth's queues, fed by native XDP on the veth
#: (device auto/veth), or on a netkit single device's leased queues, fed by native XDP on the
#: physical NIC (device netkit-single with leases, Linux 7.1+; :mod:`.lease`).
PLACEMENT_POD_QUEUE = "pod-queue-copy"
PLACEMENT_LEASED = lease.PLACEMENT


@attrs.frozen
class VmOptions:
    """``spec.options["vm"]``: ``{"queues": N}`` (1..64, default 1), the VM's queue pairs."""

    queues: int = 1

    @classmethod
    def from_spec(cls, spec: EndpointSpec) -> "VmOptions | None":
        if OPTIONS_KEY not in spec.options:
            return None
        raw = spec.options[OPTIONS_KEY]
        if raw is None or raw is True:
            raw = {}
        if not isinstance(raw, Mapping):
            raise InvalidSpec(f"option {OPTIONS_KEY!r} must be a mapping like {{\"queues\": 1}}, "
                              f"not {type(raw).__name__}")
        unknown = sorted(map(str, set(raw) - {"queues"}))
        if unknown:
            raise InvalidSpec(f"option {OPTIONS_KEY!r}: unknown key(s) {', '.join(unknown)} "
                              "(known: queues)")
        queues = raw.get("queues", 1)
        if isinstance(queues, bool) or not isinstance(queues, int) or not 1 <= queues <= MAX_QUEUES:
            raise InvalidSpec(f"{OPTIONS_KEY}.queues must be an integer 1..{MAX_QUEUES}, "
                              f"not {queues!r}")
        return cls(queues)


def is_vm(spec: EndpointSpec) -> bool:
    return OPTIONS_KEY in spec.options


#: Why a VM endpoint is a veth pair whatever the kernel offers (its DeviceInfo reason).
DEVICE_REASON = ("VM endpoint: veth, whose native XDP sees every frame the node sends it; a "
                 "netkit peer has only generic XDP, which the kernel skips for frames the node "
                 "redirected to it (skb->redirected)")


def validate(spec: EndpointSpec) -> None:
    if VmOptions.from_spec(spec) is None:
        return
    if spec.device == DeviceKind.NETKIT.value:
        raise InvalidSpec(
            "option 'vm' with device 'netkit': a VM endpoint needs native XDP on its pod side, "
            "which netkit does not have (generic XDP skips the frames the node redirects to "
            "it); use device auto or veth")
    if spec.single:
        opts = VmOptions.from_spec(spec)
        if len(spec.leases) != opts.queues:
            raise InvalidSpec(
                f"option 'vm' on a netkit single device: {opts.queues} queue(s) need as many "
                f"leases (one physical NIC queue per VM queue), not {len(spec.leases)}; add "
                "leases like ['eth1:3'] or use device auto or veth")


def placement(kind: DeviceKind | str, queues: int, start_queue: int = 0) -> tuple[str, str]:
    """(name, sentence) of where the VM's sockets sit, for status and ``vm-netdev``."""
    last = start_queue + queues - 1
    qs = f"queue {start_queue}" if queues == 1 else f"queues {start_queue}..{last}"
    if str(kind) == DeviceKind.NETKIT_SINGLE.value:
        return PLACEMENT_LEASED, (
            f"AF_XDP copy mode on the leased {qs} of the netkit single device, fed by native "
            "XDP on the physical NIC from the physical queues it leases (zero-copy is not "
            "known to work on a leased queue). Receive only: on Linux 7.3 the kernel sends "
            "none of a copy-mode socket's frames on a leased queue (none completed, none on "
            "the wire), so the VM cannot transmit; see docs/vm.md")
    return PLACEMENT_POD_QUEUE, (
        f"AF_XDP copy mode on {qs} of the pod-side {kind}, fed by native XDP: no leased "
        "physical queue (that is placement leased-queue-copy, device netkit-single with "
        "leases), so every frame is copied once into "
        "the socket's memory")


def pin_dir(bpffs_root: str, endpoint_id: str) -> Path:
    return pins.Layout(bpffs_root).plugin_dir(endpoint_id, PLUGIN)


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def vm_mac(spec: EndpointSpec) -> str:
    """The VM's MAC: the pod-side device's (what the node's neighbour entry and the L2
    datapath already use), or, where that device has none (netkit L3), one derived from the
    endpoint id."""
    from nkframe.netlink import links
    from nkframe_fwd.datapath import derived_mac

    mac = (links.get_link(spec.ifname, netns=spec.netns).address or ZERO_MAC).lower()
    if mac == ZERO_MAC:
        return derived_mac(spec.id, "pod")
    return mac


def to_pod_program() -> ProgramSpec:
    """A program that only continues, on TO_POD, for where it puts the packet's path: an
    endpoint with TO_POD programs is reached through its node-side device (the uplink uses
    ``bpf_redirect``, not ``bpf_redirect_peer``), so every packet to the VM is transmitted by
    that device, whose TX checksum offload :func:`attach` turns off.  The kernel then
    completes checksums and segments GSO packets before the frame reaches the VM's socket:
    AF_XDP has no way to tell QEMU that a checksum is left to fill in, and a frame larger than
    a UMEM chunk is dropped."""
    return ProgramSpec(name=TO_POD_PROGRAM, object=objects.path(TO_POD_PROGRAM),
                       program=TO_POD_PROGRAM, hook=Hook.TO_POD, order=TO_POD_ORDER,
                       plugin=PLUGIN, shared=True)


def attach(ctx: EndpointContext) -> None:
    """Turn off TX checksum offload on the node side, load the steering program for this
    endpoint, pin its maps, attach it (native XDP, through a link) to the pod-side device and
    pin the link; every step is on ``ctx.undo`` (the device goes with a rollback)."""
    from nkframe.netlink import netdev

    spec, dev = ctx.spec, ctx.device
    opts = VmOptions.from_spec(spec)
    assert opts is not None and dev is not None and dev.pod_ifname is not None
    if not spec.single:
        netdev.set_tx_checksum(dev.node_ifname, False, ctx.node_netns)
    d = pin_dir(ctx.bpffs_root, spec.id)
    d.mkdir(parents=True, exist_ok=True)
    ctx.undo.push(f"remove the VM pins of {spec.id}", lambda: pins.remove_tree(d))
    mac = vm_mac(spec)
    if spec.single:
        lease.attach(ctx, str(d / XSKMAP), mac, opts.queues)
        return
    with bpf.BpfObject.open(objects.path(OBJECT)) as obj:
        obj.set_global("vm_mac", _mac_bytes(mac))
        obj.set_max_entries(XSKMAP, opts.queues)
        obj.load()
        obj.maps[XSKMAP].pin(d / XSKMAP)
        obj.maps[STATS_MAP].pin(d / STATS_MAP)
        with netns.enter(spec.netns):
            link = bpf.Link.create(obj.programs[PROGRAM].fd, dev.pod_ifindex, bpf.BPF_XDP,
                                   flags=bpf.XDP_FLAGS_DRV_MODE)
        with link:
            link.pin(d / LINK)


@attrs.frozen
class VmSteering:
    """A VM endpoint's steering as bpffs and the kernel show it."""

    endpoint_id: str
    queues: int
    xskmap: str  # the pin QEMU's map-path names
    attached: bool  # the pinned link is there and still attached to a device
    prog_id: int | None
    ifindex: int | None  # the device the link is attached to (pod side, or the leasing NIC)
    problem: str | None = None
    start_queue: int = 0  # the VM's first queue on the pod's device (QEMU's start-queue)
    placement: str = PLACEMENT_POD_QUEUE

    def as_dict(self) -> dict:
        return attrs.asdict(self)


def read_steering(bpffs_root: str, spec: EndpointSpec) -> VmSteering:
    opts = VmOptions.from_spec(spec)
    queues = opts.queues if opts else 0
    d = pin_dir(bpffs_root, spec.id)
    xskmap = str(d / XSKMAP)
    if spec.single and spec.leases:
        attached, prog_id, ifindex, start, problem = lease.read(bpffs_root, spec, xskmap)
        return VmSteering(spec.id, queues, xskmap, attached, prog_id, ifindex, problem,
                          start or 0, PLACEMENT_LEASED)
    problem = None
    prog_id = ifindex = None
    attached = False
    try:
        with bpf.Link.from_pin(d / LINK) as link:
            info = link.info()
        prog_id, ifindex = info.prog_id, info.ifindex
        attached = bool(ifindex)
        if not attached:
            problem = "the steering link is pinned but its device is gone"
    except KernelError as e:
        problem = ("the steering link is not pinned" if e.errno == errno.ENOENT
                   else f"the steering link cannot be opened: {e}")
    if attached and not Path(xskmap).exists():
        attached, problem = False, f"the XSKMAP pin {xskmap} is missing"
    return VmSteering(spec.id, queues, xskmap, attached, prog_id, ifindex, problem)


def report(bpffs_root: str, ep: Endpoint) -> EndpointReport:
    """The endpoint's placement and steering for ``nkframe status`` (``nkframe_endpoint_report``);
    steering that is no longer whole is a problem, so ``status --check`` fails on it."""
    st = read_steering(bpffs_root, ep.spec)
    facts = {"placement": st.placement, "queues": str(st.queues), "start_queue": str(st.start_queue),
             "xskmap": st.xskmap,
             "steering": (f"prog {st.prog_id} on ifindex {st.ifindex}" if st.attached else "not attached")}
    problems = []
    if not st.attached:
        problems.append(f"VM steering not whole: {st.problem}; the VM gets no frames until the "
                        "endpoint is removed and added again (then restart QEMU: its map-path "
                        "opens the new XSKMAP)")
    return EndpointReport(facts=facts, problems=problems)


def vm_counters(bpffs_root: str, endpoint_id: str,
                spec: EndpointSpec | None = None) -> dict[str, int] | None:
    if spec is not None and spec.single and spec.leases:
        return lease.counters(bpffs_root, spec, STATS)
    path = pin_dir(bpffs_root, endpoint_id) / STATS_MAP
    if not path.exists():
        return None
    out = {}
    with bpf.Map.from_pin(path) as m:
        for slot, name in enumerate(STATS):
            per_cpu = m.lookup_percpu(struct.pack("<I", slot)) or []
            out[name] = sum(struct.unpack("<Q", v[:8])[0] for v in per_cpu)
    return out

