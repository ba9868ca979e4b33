"""Kernel features, found by trying them.

Each probe does the real thing on throw-away objects: creates a device in a scratch network
namespace, issues ``BPF_LINK_CREATE`` on an ifindex that does not exist (``ENODEV`` means the
kernel knows the attach type, ``EINVAL`` that it does not), opens an XDP socket, asks the netdev
generic-netlink family for its operations.  Results are cached per process; every "no" carries a
reason a user can act on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import re
import socket
import threading
import uuid
from typing import Callable, Iterator

import attrs

from nkframe.errors import NkframeError, NotSupported
from nkframe.uapi import AF_XDP

FEATURES = (
    "bpffs",
    "btf",
    "tc",
    "tcx",
    "netkit",
    "netkit_scrub",
    "netkit_headroom",
    "netkit_single",
    "xdp_native",
    "xdp_generic",
    "af_xdp",
    "queue_lease",
    "vm_endpoint",
)

BAD_IFINDEX = 0x7FFFFFF0  # an ifindex no device has


@attrs.frozen
class Feature:
    supported: bool
    reason: str


@attrs.frozen
class Features:
    """Probe results by feature name."""

    kernel: str
    libbpf: str
    libxdp: str | None
    items: dict = attrs.field(converter=dict)

    def __getitem__(self, name: str) -> Feature:
        return self.items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.items)

    def supported(self, name: str) -> bool:
        return self.items[name].supported

    def require(self, name: str) -> None:
        f = self.items[name]
        if not f.supported:
            raise NotSupported(name, f.reason)

    def to_dict(self) -> dict:
        return {
            "kernel": self.kernel,
            "libbpf": self.libbpf,
            "libxdp": self.libxdp or "",
            "features": {k: {"supported": v.supported, "reason": v.reason} for k, v in self.items.items()},
        }


_lock = threading.Lock()
_cache: Features | None = None


def features(*, refresh: bool = False) -> Features:
    """Probe every feature once per process (thread-safe)."""
    global _cache
    with _lock:
        if _cache is None or refresh:
            _cache = _probe_all()
        return _cache


def override(f: Features | None) -> None:
    """Replace the cached results (tests that need a kernel without some feature)."""
    global _cache
    with _lock:
        _cache = f


# ------------------------------------------------------------------------------------------


def _probe_all() -> Features:
    from nkframe import bpf

    out: dict[str, Feature] = {}
    out["bpffs"] = _guard(_probe_bpffs)
    out["btf"] = _guard(_probe_btf)
    if os.geteuid() != 0:
        for name in FEATURES:
            out.setdefault(name, Feature(False, "probing needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"))
        return Features(platform.release(), bpf.libbpf_version(), bpf.libxdp_version(), out)

    with _Scratch() as scratch:
        out["tcx"] = _guard(_probe_tcx)
        out["tc"] = _guard(lambda: _probe_tc(scratch))
        out["netkit"] = _guard(lambda: _probe_netkit(scratch))
        if out["netkit"].supported:
            out["netkit_scrub"] = _guard(lambda: _probe_netkit_attr(scratch, "scrub", "6.13 (Debian 6.12.y has it backported)"))
            out["netkit_headroom"] = _guard(lambda: _probe_netkit_attr(scratch, "headroom", "6.14"))
            out["netkit_single"] = _guard(lambda: _probe_netkit_attr(scratch, "single", "7.1"))
        else:
            why = f"no netkit: {out['netkit'].reason}"
            for name in ("netkit_scrub", "netkit_headroom", "netkit_single"):
                out[name] = Feature(False, why)
        out["xdp_native"] = _guard(lambda: _probe_xdp(scratch, native=True))
        out["xdp_generic"] = _guard(lambda: _probe_xdp(scratch, native=False))
        out["af_xdp"] = _guard(_probe_af_xdp)
        out["queue_lease"] = _guard(lambda: _probe_queue_lease(scratch))
    out["vm_endpoint"] = vm_endpoint(out["xdp_native"], out["af_xdp"], out["queue_lease"],
                                     out["netkit_single"])
    return Features(platform.release(), bpf.libbpf_version(), bpf.libxdp_version(), {k: out[k] for k in FEATURES})


def _guard(fn: Callable[[], Feature]) -> Feature:
    try:
        return fn()
    except NotSupported as e:
        return Feature(False, e.reason)
    except (NkframeError, OSError) as e:
        return Feature(False, f"probe failed: {e}")
    except Exception as e:  # noqa: BLE001 - one broken probe must not hide the others
        return Feature(False, f"probe error ({type(e).__name__}: {e}); please report it")


SCRATCH_PREFIX = "nkprobe-"
# nkprobe-<pid of the probing process>-<random>: the pid says whose it is after a crash.
_SCRATCH_NAME = re.compile(r"nkprobe-([1-9][0-9]*)-[0-9a-f]+")


def scratch_name(pid: int | None = None) -> str:
    return f"{SCRATCH_PREFIX}{pid or os.getpid()}-{uuid.uuid4().hex[:6]}"


def process_alive(pid: int, *, since: float | None = None) -> bool:
    """Is ``pid`` a running process -- and, given ``since`` (epoch seconds when something was
    made under its name), one that was already running then?  A process started later only
    reuses the number of the dead maker."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: alive
    if since is None:
        return True
    try:
        started = _start_time(pid)
    except (OSError, ValueError, IndexError):
        return True  # can't tell: keep what might be someone's
    return started <= since + 1.0  # btime has whole-second resolution


def _start_time(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        # Field 22 (starttime, clock ticks after boot); the name in field 2 may hold spaces and
        # parentheses, so count from the last ')'.
        fields = f.read().rpartition(")")[2].split()
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def remove_stale_scratch() -> list[str]:
    """Delete scratch namespaces of probes that died before removing theirs (SIGKILL, a crash
    in the middle of a probe).  Only names whose pid is not running (or was reused by a process
    started after the namespace was made) are touched; returns the names deleted."""
    from nkframe import netns

    try:
        names = os.listdir(netns.NETNS_RUN_DIR)
    except FileNotFoundError:
        return []
    removed = []
    for name in sorted(names):
        m = _SCRATCH_NAME.fullmatch(name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            made = os.stat(netns.netns_path(name)).st_ctime  # the nsfs inode: when it was bound
        except FileNotFoundError:
            continue  # its owner removed it just now
        if process_alive(int(m.group(1)), since=made):
            continue
        try:
            netns.delete(name)
        except (NkframeError, OSError):
            continue  # raced with another cleaner, or not ours to remove after all
        removed.append(name)
    return removed


class _Scratch:
    """A network namespace that lives for the duration of the probes."""

    def __enter__(self) -> "_Scratch":
        from nkframe import netns

        remove_stale_scratch()
        self.name = scratch_name()
        netns.create(self.name)
        self._n = 0
        return self

    def ifname(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def __exit__(self, *exc) -> None:
        from nkframe import netns

        netns.delete(self.name)


def _probe_bpffs() -> Feature:
    from nkframe import pins

    if pins.is_bpffs("/sys/fs/bpf"):
        return Feature(True, "mounted at /sys/fs/bpf")
    with open("/proc/filesystems") as f:
        if any(line.split()[-1] == "bpf" for line in f if line.strip()):
            return Feature(True, "available (not mounted at /sys/fs/bpf yet; nkframe mounts it)")
    return Feature(False, "the kernel has no bpf filesystem (CONFIG_BPF_SYSCALL off)")


def _probe_btf() -> Feature:
    if os.path.exists("/sys/kernel/btf/vmlinux"):
        return Feature(True, "/sys/kernel/btf/vmlinux present")
    return Feature(False, "no /sys/kernel/btf/vmlinux: the kernel was built without CONFIG_DEBUG_INFO_BTF")


_probe_objects: dict[str, object] = {}


def _probe_prog(kind: str):
    """A loaded trivial program of the given kind ('tc' or 'xdp'), kept for the process."""
    from nkframe import bpf, objects

    if kind not in _probe_objects:
        obj = bpf.BpfObject.open(objects.path("probe"))
        obj.load()
        _probe_objects["obj"] = obj
        _probe_objects["tc"] = obj.programs["probe_tc"]
        _probe_objects["xdp"] = obj.programs["probe_xdp"]
    return _probe_objects[kind]


def _link_create_known(attach_type: int) -> bool:
    from nkframe import bpf
    from nkframe.errors import KernelError

    prog = _probe_prog("tc")
    try:
        link = bpf.Link.create(prog.fd, BAD_IFINDEX, attach_type)
    except KernelError as e:
        if e.errno == errno.ENODEV:
            return True
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
            return False
        raise
    link.detach()
    link.close()
    return True


def _probe_tcx() -> Feature:
    from nkframe import bpf

    if _link_create_known(bpf.BPF_TCX_INGRESS):
        return Feature(True, "BPF_LINK_CREATE knows BPF_TCX_INGRESS")
    return Feature(False, f"the kernel ({platform.release()}) does not know TCX links; TCX needs Linux 6.6+ (tc is used instead)")


def _probe_tc(scratch: _Scratch) -> Feature:
    from nkframe import bpf, netns
    from nkframe.netlink import links

    a, b = scratch.ifname("tc"), scratch.ifname("tc")
    # Netlink by the scratch namespace's name, never netns=None: inside links.batch() (an
    # endpoint add probes on first use) None is the caller's cached node socket, and the pair
    # once appeared, and stayed, in the node's namespace.  Only the ifindex-based calls run
    # with the scratch namespace entered.
    links.create_veth(links.VethSpec(name=a, peer_name=b), netns=scratch.name)
    try:
        idx = links.get_link(a, netns=scratch.name).ifindex
        with netns.enter(scratch.name):
            bpf.tc_hook_create(idx, bpf.TC_INGRESS)
            prog = _probe_prog("tc")
            bpf.tc_attach(idx, bpf.TC_INGRESS, prog.fd, handle=1, priority=1)
            bpf.tc_detach(idx, bpf.TC_INGRESS, handle=1, priority=1)
    finally:
        links.delete_link(a, netns=scratch.name, missing_ok=True)
    return Feature(True, "clsact qdisc and cls_bpf direct-action filter attached on a veth")


def _probe_netkit(scratch: _Scratch) -> Feature:
    from nkframe.netlink import links, netkit

    name, peer = scratch.ifname("nkp"), scratch.ifname("nkq")
    netkit.create_netkit(netkit.NetkitSpec(name=name, peer_name=peer), netns=scratch.name)
    links.delete_link(name, netns=scratch.name)
    from nkframe import bpf

    if not _link_create_known(bpf.BPF_NETKIT_PRIMARY):
        return Feature(False, "netkit devices exist but BPF_LINK_CREATE does not know BPF_NETKIT_PRIMARY")
    return Feature(True, "created a netkit pair; BPF_NETKIT_PRIMARY/PEER links known")


def _probe_netkit_attr(scratch: _Scratch, what: str, since: str) -> Feature:
    from nkframe.netlink import links, netkit

    name, peer = scratch.ifname("nkp"), scratch.ifname("nkq")
    if what == "scrub":
        spec = netkit.NetkitSpec(name=name, peer_name=peer, scrub=netkit.NetkitScrub.NONE, peer_scrub=netkit.NetkitScrub.NONE)
    elif what == "headroom":
        spec = netkit.NetkitSpec(name=name, peer_name=peer, headroom=64, tailroom=64)
    else:
        spec = netkit.NetkitSpec(name=name, peer_name=None, pairing=netkit.NetkitPairing.SINGLE)
    try:
        netkit.create_netkit(spec, netns=scratch.name)
    except NotSupported as e:
        return Feature(False, f"{e.reason} (needs Linux {since})")
    links.delete_link(name, netns=scratch.name, missing_ok=True)
    return Feature(True, f"created a netkit device with {what}")


def _probe_xdp(scratch: _Scratch, *, native: bool) -> Feature:
    from nkframe import bpf, netns
    from nkframe.netlink import links

    a, b = scratch.ifname("xd"), scratch.ifname("xd")
    flags = bpf.XDP_FLAGS_DRV_MODE if native else bpf.XDP_FLAGS_SKB_MODE
    links.create_veth(links.VethSpec(name=a, peer_name=b), netns=scratch.name)  # see _probe_tc
    try:
        idx = links.get_link(a, netns=scratch.name).ifindex
        with netns.enter(scratch.name):
            bpf.xdp_attach(idx, _probe_prog("xdp").fd, flags)
            bpf.xdp_detach(idx, flags)
    finally:
        links.delete_link(a, netns=scratch.name, missing_ok=True)
    mode = "native (driver) mode on veth" if native else "generic (skb) mode"
    return Feature(True, f"XDP program attached in {mode}")


def vm_endpoint(xdp_native: Feature, af_xdp: Feature, queue_lease: Feature | None = None,
                netkit_single: Feature | None = None) -> Feature:
    """Can this node have VM endpoints (the ``vm`` plugin), and in which placements?  Derived:
    the steering needs native XDP (on the pod-side veth, or on the NIC whose queues are
    leased), QEMU's af-xdp netdev needs AF_XDP, the leased placement netkit single devices and
    queue leasing."""
    for name, f in (("xdp_native", xdp_native), ("af_xdp", af_xdp)):
        if not f.supported:
            return Feature(False, f"needs {name}: {f.reason}")
    pod = ("placement pod-queue-copy: AF_XDP copy mode on the pod-side veth's queues, native "
           "XDP")
    missing = [(n, f) for n, f in (("queue_lease", queue_lease), ("netkit_single", netkit_single))
               if f is None or not f.supported]
    if missing:
        n, f = missing[0]
        why = f.reason if f is not None else "not probed"
        return Feature(True, f"{pod}; placement leased-queue-copy (device netkit-single with "
                             f"leases) needs {n}: {why}")
    return Feature(True, f"{pod}; placement leased-queue-copy with device netkit-single and "
                         "leases: AF_XDP copy mode on the netkit device's leased queues, native "
                         "XDP on the NIC (which needs native XDP in its driver); receive only "
                         "in copy mode (the kernel sends none of the VM's frames, docs/vm.md)")


def _probe_af_xdp() -> Feature:
    try:
        s = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
    except OSError as e:
        if e.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            return Feature(False, "the kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS off)")
        raise
    s.close()
    return Feature(True, "opened an AF_XDP socket")


def lease_source(uplink: str, node_netns: str | None = None) -> Feature:
    """Can node device ``uplink`` lend RX queues to a netkit single device (VM endpoints)?

    Decided by the kernel, not by a list of drivers: a single device in a scratch namespace
    asks for one of the uplink's queues across namespaces (queue-create with the node's netns
    id), and the scratch namespace goes at once, which returns the queue.  Nothing is created
    in the node's namespace.  The uplink's highest RX queue is asked for; one already leased or
    bound by AF_XDP (EBUSY) still shows that the driver can lend queues.
    """
    from nkframe import netns
    from nkframe.errors import InvalidSpec, KernelError
    from nkframe.netlink import links, netdev, netkit

    if os.geteuid() != 0:
        return Feature(False, "probing needs root (CAP_NET_ADMIN)")
    if not links.link_exists(uplink, netns=node_netns):
        return Feature(False, f"no device {uplink} in the node namespace ({node_netns or 'current'})")
    phys = links.get_link(uplink, netns=node_netns).ifindex
    try:
        with netdev.NetdevFamily(node_netns) as fam:
            if not fam.has_queue_lease():
                return Feature(False, "the kernel has no queue leasing (netdev queue-create, Linux 7.1); "
                                      f"this is {platform.release()}")
            rx = [q.id for q in fam.queues(phys) if q.type is netdev.QueueType.RX and q.id is not None]
    except NotSupported as e:  # no netdev family at all (before 6.3)
        return Feature(False, f"the kernel has no queue leasing (netdev queue-create, Linux 7.1): {e.reason}")
    if not rx:
        return Feature(False, f"{uplink} lists no RX queues (is it up?)")
    queue = max(rx)
    driver = netdev.device_driver(phys, node_netns)
    with _Scratch() as scratch:
        name = scratch.ifname("nkl")
        try:
            netkit.create_netkit(netkit.NetkitSpec.single(name, num_rx_queues=2), netns=scratch.name)
        except NotSupported as e:
            return Feature(False, f"no netkit single mode to lease to: {e.reason}")
        with netns.ipr(scratch.name) as ipr:
            nsid = netns.netns_id(ipr, node_netns if node_netns else f"/proc/{os.getpid()}/ns/net")
        # Deleting the device returns the queue at once (the namespace's cleanup runs later).
        with contextlib.closing(_Deleter(name, scratch.name)), netdev.NetdevFamily(scratch.name) as fam:
            try:
                fam.queue_create(links.ifindex(name, scratch.name), phys, queue, lease_netns_id=nsid)
            except NotSupported as e:
                return Feature(False, f"{uplink} (driver {driver}) cannot lend queues: {e.reason}")
            except KernelError as e:
                if e.errno == errno.EBUSY:
                    return Feature(True, f"{uplink} (driver {driver}) has queue management ops "
                                         f"(its RX queue {queue} is in use now)")
                return Feature(False, f"the trial lease of {uplink} RX queue {queue} failed: {e}")
            except InvalidSpec as e:
                return Feature(False, f"the trial lease of {uplink} RX queue {queue} was refused: {e}")
    return Feature(True, f"{uplink} (driver {driver}) lent RX queue {queue} to a scratch netkit single "
                         "device and got it back")


@attrs.frozen
class _Deleter:
    name: str
    netns: str

    def close(self) -> None:
        from nkframe.netlink import links

        links.delete_link(self.name, netns=self.netns, missing_ok=True)


def _probe_queue_lease(scratch: _Scratch) -> Feature:
    from nkframe.netlink import netdev

    with netdev.NetdevFamily(netns=scratch.name) as fam:
        ops = fam.ops()
    if "queue-create" in ops:
        return Feature(True, "the netdev family has queue-create")
    return Feature(
        False,
        f"the netdev netlink family has no queue-create op (queue leasing needs Linux 7.1; "
        f"this is {platform.release()})",
    )
