"""AF_XDP sockets from Python, over libxdp's xsk API.

Minimal but real: one UMEM (an mmap'd packet area with its fill and completion rings) and
sockets bound to one queue of one device, receiving what an XDP program redirects into an
XSKMAP and transmitting frames straight onto the device.

We never let libxdp load its default XDP program (``inhibit_prog_load=True``): it takes every
frame of the queue, ARP included.  Load your own filtering program with an XSKMAP, then call
:meth:`XskSocket.update_xskmap`.  Virtual devices (veth) only do copy mode (``XDP_COPY``);
zero-copy needs driver support and fails with EOPNOTSUPP there.

Everything happens in the calling thread's network namespace (the device name resolves there).
"""

from __future__ import annotations

import errno
import mmap
import select
from collections.abc import Iterable

from nkframe._bpf import HAVE_LIBXDP, capture_log, check, ffi, lib
from nkframe.errors import InvalidSpec, KernelError, NotSupported

__all__ = ["XskUmem", "XskSocket", "XDP_COPY", "XDP_ZEROCOPY", "XDP_USE_NEED_WAKEUP",
           "available"]

# linux/if_xdp.h bind flags
XDP_SHARED_UMEM = 1 << 0
XDP_COPY = 1 << 1
XDP_ZEROCOPY = 1 << 2
XDP_USE_NEED_WAKEUP = 1 << 3

_DEFAULT_RING = 2048
# sendto() on an XSK reports a full or busy TX path with these; the frames stay queued.
_TRANSIENT_KICK = {errno.EAGAIN, errno.EBUSY, errno.ENOBUFS, errno.ENETDOWN}


def available() -> bool:
    """Was nkframe built with libxdp (AF_XDP support)?"""
    return HAVE_LIBXDP


def _require() -> None:
    if not HAVE_LIBXDP:
        raise NotSupported("af_xdp", "nkframe was built without libxdp: install libxdp-dev "
                           "and reinstall nkframe")


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class XskUmem:
    """Packet memory shared with the kernel: ``size_frames`` frames of ``frame_size`` bytes.

    Frames are handed out by address (offset into the area).  The fill ring gives the kernel
    empty frames to receive into; the completion ring gives back frames it has transmitted.
    """

    def __init__(self, size_frames: int = 4096, frame_size: int = 2048, *,
                 fill_size: int = _DEFAULT_RING, comp_size: int = _DEFAULT_RING,
                 frame_headroom: int = 0) -> None:
        _require()
        if not _is_pow2(frame_size) or not 2048 <= frame_size <= mmap.PAGESIZE:
            # Aligned-chunk UMEMs need a power-of-two chunk between 2048 and the page size.
            raise InvalidSpec(f"XSK frame_size must be a power of two in 2048..{mmap.PAGESIZE}, "
                              f"got {frame_size}")
        if not (_is_pow2(fill_size) and _is_pow2(comp_size)):
            raise InvalidSpec("XSK ring sizes must be powers of two")
        if size_frames < 2:
            raise InvalidSpec(f"XSK UMEM needs at least 2 frames, got {size_frames}")
        self.size_frames = size_frames
        self.frame_size = frame_size
        self._area = mmap.mmap(-1, size_frames * frame_size,
                               flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._area_ptr = ffi.from_buffer(self._area)
        # libxdp leaves ring fields it does not set uninitialised: ffi.new() zeroes them.
        self._fill = ffi.new("struct xsk_ring_prod *")
        self._comp = ffi.new("struct xsk_ring_cons *")
        cfg = ffi.new("struct xsk_umem_config *")
        cfg.fill_size = fill_size
        cfg.comp_size = comp_size
        cfg.frame_size = frame_size
        cfg.frame_headroom = frame_headroom
        out = ffi.new("struct xsk_umem **")
        try:
            with capture_log():
                check(lib.xsk_umem__create(out, self._area_ptr, size_frames * frame_size,
                                           self._fill, self._comp, cfg),
                      f"create XSK UMEM of {size_frames}x{frame_size} bytes")
        except BaseException:
            ffi.release(self._area_ptr)
            self._area.close()
            raise
        self._umem = out[0]
        self._free = [i * frame_size for i in range(size_frames)]
        self._sockets = 0
        self._closed = False

    @property
    def fd(self) -> int:
        self._require_open()
        return lib.xsk_umem__fd(self._umem)

    @property
    def free_frames(self) -> int:
        return len(self._free)

    def _require_open(self) -> None:
        if self._closed:
            raise KernelError(errno.EBADF, "XSK UMEM: already closed")

    def frame(self, addr: int, length: int):
        """A writable view of ``length`` bytes of the UMEM at ``addr`` (no copy)."""
        return ffi.buffer(self._area_ptr + addr, length)

    def fill(self, count: int | None = None) -> int:
        """Give up to ``count`` free frames (default: as many as fit) to the kernel for RX."""
        self._require_open()
        n = len(self._free) if count is None else min(count, len(self._free))
        if n == 0:
            return 0
        idx = ffi.new("__u32 *")
        got = lib.xsk_ring_prod__reserve(self._fill, n, idx)
        if got == 0:
            # Not all n fit: retry with what the ring can take now.
            n = lib.xsk_prod_nb_free(self._fill, n)
            if n == 0:
                return 0
            got = lib.xsk_ring_prod__reserve(self._fill, n, idx)
        for i in range(got):
            lib.xsk_ring_prod__fill_addr(self._fill, idx[0] + i)[0] = self._free.pop()
        lib.xsk_ring_prod__submit(self._fill, got)
        return got

    def complete(self) -> int:
        """Take back transmitted frames from the completion ring; returns how many."""
        self._require_open()
        idx = ffi.new("__u32 *")
        n = lib.xsk_ring_cons__peek(self._comp, _DEFAULT_RING, idx)
        for i in range(n):
            self._free.append(lib.xsk_ring_cons__comp_addr(self._comp, idx[0] + i)[0])
        if n:
            lib.xsk_ring_cons__release(self._comp, n)
        return n

    def _take(self) -> int:
        if not self._free:
            self.complete()
        if not self._free:
            raise KernelError(errno.ENOBUFS, "XSK UMEM: no free frame (all in rings)")
        return self._free.pop()

    def close(self) -> None:
        if self._closed:
            return
        if self._sockets:
            raise KernelError(errno.EBUSY, f"XSK UMEM: {self._sockets} socket(s) still use it; "
                              "close them first")
        check(lib.xsk_umem__delete(self._umem), "delete XSK UMEM")
        self._closed = True
        self._umem = None
        ffi.release(self._area_ptr)
        self._area.close()

    def __enter__(self) -> XskUmem:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and not getattr(self, "_sockets", 0):
            try:
                self.close()
            except Exception:
                pass


class XskSocket:
    """An AF_XDP socket bound to ``queue_id`` of ``ifname``, receiving into ``umem``."""

    def __init__(self, ifname: str, queue_id: int, umem: XskUmem, *,
                 bind_flags: int = XDP_COPY, inhibit_prog_load: bool = True,
                 xdp_flags: int = 0, rx_size: int = _DEFAULT_RING,
                 tx_size: int = _DEFAULT_RING) -> None:
        _require()
        umem._require_open()
        if umem._sockets:
            raise NotSupported("af_xdp shared umem", "one socket per XskUmem in this version")
        self.ifname = ifname
        self.queue_id = queue_id
        self.umem = umem
        self._rx = ffi.new("struct xsk_ring_cons *")
        self._tx = ffi.new("struct xsk_ring_prod *")
        cfg = ffi.new("struct xsk_socket_config *")
        cfg.rx_size = rx_size
        cfg.tx_size = tx_size
        cfg.libxdp_flags = lib.XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD if inhibit_prog_load else 0
        cfg.xdp_flags = xdp_flags
        cfg.bind_flags = bind_flags
        out = ffi.new("struct xsk_socket **")
        with capture_log() as lines:
            ret = lib.xsk_socket__create(out, ifname.encode(), queue_id, umem._umem,
                                         self._rx, self._tx, cfg)
        if ret < 0:
            detail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
            if -ret == errno.EOPNOTSUPP and bind_flags & XDP_ZEROCOPY:
                raise NotSupported("af_xdp_zerocopy", zerocopy_refusal(ifname, queue_id))
            raise KernelError(-ret, f"create AF_XDP socket on {ifname} queue {queue_id}"
                              + (f" ({detail})" if detail else ""))
        self._xsk = ffi.gc(out[0], lib.xsk_socket__delete)
        self._fd = lib.xsk_socket__fd(self._xsk)
        self._idx = ffi.new("__u32 *")
        umem._sockets += 1
        # Half the frames wait in the fill ring for RX; the rest stay free for TX.
        umem.fill(min(rx_size, umem.free_frames // 2))

    @property
    def fd(self) -> int:
        self._require_open()
        return self._fd

    def _require_open(self) -> None:
        if self._xsk is None:
            raise KernelError(errno.EBADF, f"AF_XDP socket on {self.ifname}: already closed")

    def update_xskmap(self, map_fd: int) -> None:
        """Put this socket into an XSKMAP at index ``queue_id`` (xsk_socket__update_xskmap)."""
        self._require_open()
        check(lib.xsk_socket__update_xskmap(self._xsk, map_fd),
              f"insert AF_XDP socket of {self.ifname} queue {self.queue_id} into XSKMAP")

    def poll(self, timeout: float | None) -> bool:
        """Wait until frames are ready to receive (``timeout`` seconds, None = forever)."""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return bool(p.poll(None if timeout is None else int(timeout * 1000)))

    def recv(self, batch: int = 64, *, timeout: float = 0.0) -> list[bytes]:
        """Up to ``batch`` received frames (copied out), refilling the fill ring with their
        frames.  With ``timeout`` > 0, waits that long for the first frame."""
        self._require_open()
        umem = self.umem
        if lib.xsk_ring_prod__needs_wakeup(umem._fill):
            lib.nk_xsk_wake_rx(self._fd)
        n = lib.xsk_ring_cons__peek(self._rx, batch, self._idx)
        if n == 0 and timeout > 0 and self.poll(timeout):
            n = lib.xsk_ring_cons__peek(self._rx, batch, self._idx)
        frames = []
        start = self._idx[0]
        for i in range(n):
            desc = lib.xsk_ring_cons__rx_desc(self._rx, start + i)
            addr, length = desc.addr, desc.len
            frames.append(ffi.buffer(umem._area_ptr + addr, length)[:])
            # Aligned mode: the descriptor may point past the chunk start (headroom); the
            # chunk is what goes back to the fill ring.
            umem._free.append(addr - addr % umem.frame_size)
        if n:
            lib.xsk_ring_cons__release(self._rx, n)
            umem.fill(n)
        return frames

    def send(self, frames: Iterable[bytes]) -> int:
        """Queue frames for transmission and kick the kernel; returns how many were queued."""
        self._require_open()
        umem = self.umem
        umem.complete()
        frames = list(frames)
        for f in frames:
            if len(f) > umem.frame_size:
                raise InvalidSpec(f"frame of {len(f)} bytes does not fit a {umem.frame_size} "
                                  "byte UMEM frame")
        want = min(len(frames), umem.free_frames)
        if want == 0:
            if frames:
                raise KernelError(errno.ENOBUFS, f"AF_XDP send on {self.ifname}: no free frame")
            return 0
        got = lib.xsk_ring_prod__reserve(self._tx, want, self._idx)
        start = self._idx[0]
        for i in range(got):
            addr = umem._take()
            data = frames[i]
            ffi.memmove(umem._area_ptr + addr, data, len(data))
            desc = lib.xsk_ring_prod__tx_desc(self._tx, start + i)
            desc.addr = addr
            desc.len = len(data)
            desc.options = 0
        if got:
            lib.xsk_ring_prod__submit(self._tx, got)
            self.kick()
        return got

    def kick(self) -> None:
        """Ask the kernel to process the TX ring (copy mode needs this for every batch)."""
        ret = lib.nk_xsk_kick_tx(self.fd)
        if ret < 0 and -ret not in _TRANSIENT_KICK:
            raise KernelError(-ret, f"kick AF_XDP TX on {self.ifname} queue {self.queue_id}")

    def complete(self) -> int:
        """Reclaim transmitted frames; returns how many."""
        return self.umem.complete()

    def close(self) -> None:
        if self._xsk is None:
            return
        xsk, self._xsk = self._xsk, None
        ffi.release(xsk)  # xsk_socket__delete, exactly once
        self.umem._sockets -= 1

    def __enter__(self) -> XskSocket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def zerocopy_refusal(ifname: str, queue_id: int) -> str:
    """Why the kernel refused a zero-copy bind (EOPNOTSUPP) on ``ifname``'s ``queue_id``, from
    what the kernel reports about the devices (in the calling thread's netns).

    A netkit device hands zero-copy to the physical device of a leased queue (7.1+,
    drivers/net/netkit.c: that driver needs ndo_bpf, ndo_xdp_xmit and ndo_xsk_wakeup and the
    xsk-zerocopy XDP feature); the physical queue is found from the physical side's queue-get,
    the only side that reports a lease.
    """
    import socket

    from nkframe.netlink import netdev

    where = f"AF_XDP zero-copy bind on {ifname} queue {queue_id} refused (EOPNOTSUPP)"
    try:
        ifindex = socket.if_nametoindex(ifname)
    except OSError:
        return f"{where}; the device is gone"
    driver = netdev.device_driver(ifindex)
    try:
        with netdev.NetdevFamily() as fam:
            phys = next((q for q in fam.leased_queues() if q.lease and q.lease.ifindex == ifindex
                         and q.lease.queue_id == queue_id and q.lease.netns_id is None), None)
            target = phys.ifindex if phys is not None and phys.ifindex else ifindex
            features = fam.xdp_features(target)
    except (NotSupported, KernelError):
        phys, features = None, set()
    shown = ", ".join(sorted(features)) or "none reported"
    lacks = [f for f in ("xsk-zerocopy", "ndo-xmit") if f not in features]
    lack = (f"it lacks {' and '.join(lacks)}" if lacks
            else "the kernel refused it all the same")
    if phys is not None and phys.ifindex:
        pdrv = netdev.device_driver(phys.ifindex)
        return (f"{where}: {ifname} ({driver}) passes zero-copy to the physical device of the "
                f"leased queue, {netdev.device_label(phys.ifindex)} queue {phys.id} (driver {pdrv}), "
                f"whose XDP features are {shown}: {lack}; bind with XDP_COPY (copy mode works "
                "on a leased queue) or lease from a NIC whose driver supports AF_XDP zero-copy")
    if driver == "netkit":
        return (f"{where}: {ifname} (netkit) supports zero-copy only on a queue leased from a "
                "physical device whose driver has AF_XDP zero-copy; this queue's physical "
                f"device is not visible from this netns or the queue is not leased; use XDP_COPY")
    return (f"{where}: driver {driver}'s XDP features are {shown}: {lack}; use XDP_COPY "
            "(zero-copy needs driver support)")
