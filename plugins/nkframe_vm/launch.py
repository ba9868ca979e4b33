"""``nkframe vm-run``: start QEMU on a VM endpoint through ``sock-fds``, sockets made by nkframe.

QEMU's af-xdp netdev takes ``sock-fds=FD0:FD1:...`` with ``inhibit=on`` (since 8.2, the first
af-xdp release): one fd per queue, in queue order, each an AF_XDP socket that is *open but not
bound*, already in the XSKMAP slot of its queue (qapi/net.json).  QEMU then does the rest on
each fd itself (net/af-xdp.c): it registers its UMEM on it (``xsk_umem__create_with_fd``),
creates the rings and binds it to ``ifname`` queue *start-queue + q* (libxdp
``xsk_socket__create``, which with ``inhibit`` loads no program and touches no map).

So what nkframe does here, for the QEMUs without ``map-path`` (8.2 to 10.0) and for any QEMU
that should not hold CAP_NET_RAW or CAP_BPF:

1. every check first (endpoint, VM option, steering in place, the QEMU's version and backends,
   the user's arguments), so a refusal leaves nothing behind;
2. in the endpoint's pod network namespace, one ``socket(AF_XDP, SOCK_RAW, 0)`` per queue (the
   socket belongs to that namespace: QEMU's bind resolves the device there);
3. each socket into the pinned XSKMAP at its queue's slot, only if the slot is empty
   (``BPF_NOEXIST``: a slot holding a socket means a QEMU already runs on the endpoint);
4. ``execv`` of the QEMU, still in the pod namespace, with those fds inheritable and named in
   ``-netdev af-xdp,...,inhibit=on,sock-fds=...``: QEMU becomes this process, no nkframe
   process stays behind.  When QEMU exits the sockets close and the kernel takes them out of
   the map.

QEMU's own needs on this path: no CAP_NET_RAW (it creates no socket), no CAP_BPF (it opens
no map); ``RLIMIT_MEMLOCK`` room for its UMEM, 32 MiB per queue (libxdp's default rings:
8192 frames of 4096 bytes), unless it has CAP_IPC_LOCK; and to run in the pod namespace (the
bind and QEMU's ``if_nametoindex`` resolve ``ifname`` there).  ``--user`` makes use of that:
the sockets are made as root, then the process becomes that user keeping CAP_IPC_LOCK alone
(:func:`run_as`) and only then executes QEMU.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections.abc import Sequence

import attrs

from nkframe import bpf, netns
from nkframe.errors import EndpointExists, InvalidSpec, KernelError
from nkframe.qemu import AfXdpNetdev, QemuInfo, check_af_xdp, split_options
from nkframe.types import Endpoint
from nkframe.uapi import (AF_XDP, BPF_NOEXIST, CAP_IPC_LOCK, LINUX_CAPABILITY_VERSION_3,
                          PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, PR_SET_KEEPCAPS)

from . import steer

#: QEMU's UMEM per queue (net/af-xdp.c: (fill + comp + rx + tx default ring sizes) frames of
#: XSK_UMEM__DEFAULT_FRAME_SIZE), locked memory charged to its user without CAP_IPC_LOCK.
QEMU_UMEM_BYTES = (2048 + 2048) * 2 * 4096


@attrs.frozen
class Launch:
    """Everything checked, nothing created yet: what :func:`start` will do."""

    endpoint_id: str
    netns: str
    ifname: str
    queues: int
    xskmap: str
    qemu: str
    netdev_id: str
    mac: str
    args: tuple[str, ...]
    #: (uid, gid, name) QEMU runs as, or None: as the caller (see :func:`run_as`).
    user: tuple[int, int, str] | None = None
    #: The VM's first queue on the pod's device (a leased placement's first netkit queue).
    start_queue: int = 0

    def netdev(self, fds: Sequence[int]) -> AfXdpNetdev:
        return AfXdpNetdev(self.ifname, id=self.netdev_id, mode="native", force_copy=True,
                           queues=self.queues, start_queue=self.start_queue, inhibit=True,
                           sock_fds=tuple(fds)).validate()

    def argv(self, fds: Sequence[int]) -> list[str]:
        """QEMU's whole argument list: the binary, the user's arguments, then ours."""
        return [self.qemu, *self.args, *self.netdev(fds).argv(self.mac)]


def _option_values(args: Sequence[str], names: tuple[str, ...]) -> list[str]:
    """The values given to QEMU options ``names`` (``-netdev X``, ``--netdev X``,
    ``-netdev=X``)."""
    out = []
    for i, a in enumerate(args):
        for name in names:
            for spelling in (name, "-" + name):
                if a == spelling and i + 1 < len(args):
                    out.append(args[i + 1])
                elif a.startswith(spelling + "="):
                    out.append(a[len(spelling) + 1:])
    return out


def check_args(args: Sequence[str], netdev_id: str) -> None:
    """Refuse user arguments that clash with the -netdev and -device vm-run adds."""
    for value in _option_values(args, ("-netdev",)):
        opts = split_options(value)
        if ("id", netdev_id) in opts[1:]:
            raise InvalidSpec(f"the QEMU arguments already have a -netdev with id={netdev_id} "
                              f"({value[:120]}); vm-run adds that netdev itself: drop it, or "
                              "give vm-run another --id")
    for value in _option_values(args, ("-device",)):
        if ("netdev", netdev_id) in split_options(value)[1:]:
            raise InvalidSpec(f"the QEMU arguments already have a -device on netdev {netdev_id} "
                              f"({value[:120]}); vm-run adds the virtio NIC itself: drop it, "
                              "or give vm-run another --id")
    for value in _option_values(args, ("-nic",)):
        if ("id", netdev_id) in split_options(value)[1:]:
            raise InvalidSpec(f"the QEMU arguments already have a -nic with id={netdev_id}; "
                              "give vm-run another --id")


def resolve_user(user: str) -> tuple[int, int, str]:
    """(uid, gid, name) of a user name or number, from the password database."""
    import pwd

    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise InvalidSpec(f"--user {user!r}: no such user") from None
    return pw.pw_uid, pw.pw_gid, pw.pw_name


def plan(ep: Endpoint, bpffs_root: str, qemu: QemuInfo, args: Sequence[str], *,
         netdev_id: str = "nk0", user: str | None = None) -> Launch:
    """Check everything :func:`start` needs; raises before anything is created."""
    from . import netdev

    spec = ep.spec
    opts, st = netdev.vm_steering(ep, bpffs_root)
    launch = Launch(spec.id, spec.netns, spec.ifname, opts.queues, st.xskmap, qemu.path,
                    netdev_id, steer.vm_mac(spec), tuple(args),
                    resolve_user(user) if user is not None else None, st.start_queue)
    # The QEMU must have af-xdp (8.2+); sock-fds is there from the start.
    check_af_xdp(qemu, launch.netdev([0] * opts.queues))
    check_args(args, netdev_id)
    return launch


def open_sockets(launch: Launch) -> list[int]:
    """One unbound AF_XDP socket per queue, made in the pod's namespace, each put into its
    queue's XSKMAP slot; inheritable fds.  All or nothing: on an error every socket made so far
    is closed (which also takes it out of the map)."""
    fds: list[int] = []
    try:
        with netns.enter(launch.netns):
            for _ in range(launch.queues):
                try:
                    s = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
                except OSError as e:
                    raise KernelError(e.errno or errno.EPERM,
                                      f"create an AF_XDP socket in network namespace "
                                      f"{launch.netns} (needs CAP_NET_RAW there)") from None
                fds.append(s.detach())
        with bpf.Map.from_pin(launch.xskmap) as m:
            for q, fd in enumerate(fds, launch.start_queue):
                try:
                    m.update(struct.pack("<I", q), struct.pack("<i", fd), BPF_NOEXIST)
                except KernelError as e:
                    if e.errno == errno.EEXIST:
                        raise EndpointExists(
                            f"endpoint {launch.endpoint_id}: queue {q}'s XSKMAP slot already "
                            "holds a socket: a QEMU already runs on this endpoint (stop it "
                            "first)") from None
                    raise
        for fd in fds:
            os.set_inheritable(fd, True)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def run_as(uid: int, gid: int, name: str) -> None:
    """Become ``uid``/``gid`` (no supplementary groups) keeping one capability across the
    coming exec, CAP_IPC_LOCK: QEMU registers a 32 MiB UMEM per queue, which the kernel
    charges to RLIMIT_MEMLOCK (often 8 MiB) unless the process has CAP_IPC_LOCK, and raising
    that limit needs CAP_SYS_RESOURCE, which a container may not have.  Every other
    capability goes: the setuid from root clears the rest, and only an ambient capability
    survives the exec of an unprivileged binary."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def call(ret: int, what: str) -> None:
        if ret != 0:
            err = ctypes.get_errno() or errno.EPERM
            raise KernelError(err, f"{what} for QEMU as user {name} ({uid}:{gid}); "
                              "vm-run --user needs root")

    call(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "keep capabilities over setuid")
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as e:
        raise KernelError(e.errno or errno.EPERM, f"become user {name} ({uid}:{gid}) for QEMU; "
                          "vm-run --user needs root") from None
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    bit = 1 << CAP_IPC_LOCK
    # two (effective, permitted, inheritable) triples: capabilities 0-31, 32-63
    data = (ctypes.c_uint32 * 6)(bit, bit, bit, 0, 0, 0)
    call(libc.capset(header, data), "keep CAP_IPC_LOCK")
    call(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_IPC_LOCK, 0, 0),
         "make CAP_IPC_LOCK ambient")


def start(launch: Launch) -> None:
    """Make the sockets and exec QEMU in the pod's namespace; returns only by raising (the
    sockets are closed again then)."""
    fds = open_sockets(launch)
    try:
        argv = launch.argv(fds)
        sys.stdout.flush()
        sys.stderr.flush()
        with netns.enter(launch.netns):
            if launch.user is not None:
                run_as(*launch.user)
            try:
                os.execv(launch.qemu, argv)
            except OSError as e:
                failed = e
        raise KernelError(failed.errno or errno.EIO, f"exec {launch.qemu}")
    finally:
        for fd in fds:
            os.close(fd)
