"""AF_XDP sockets from Python, over libxdp's xsk API.

Minimal but real: one UMEM (an mmap'd packet area with its fill and completion rings) and
sockets bound to one queue of one device, receiving what an XDP program redirects into an
XSKMAP and transmitting frames straight onto the device.

We never let libxdp load its default XDP program (``inhibit_prog_load=True``): it takes every
frame of the queue, ARP included.  Load your own filtering program with an XSKMAP, then call
:meth:`XskSocket.update_xskmap`.  Virtual devices (veth) only do copy mode (``XDP_COPY``);
zero-copy needs driver support and fails with EOPNOTSUPP there.

Everything happens in the calling thread's network namespace (the device name resolves there).

Batches, not descriptors
------------------------
Python never touches a ring descriptor by itself: every ring operation is one call into C
(``nkframe/_bpf/nk_xsk_impl.h``) that handles a whole batch, and cffi releases the GIL around it.

* :meth:`XskSocket.recv` / :meth:`XskSocket.send` keep their simple shape (a list of ``bytes``
  out, any sequence of bytes-like frames in), each one C call per batch.
* The fast path has no per-frame allocation: an :class:`XskDescs` is a reusable array of
  descriptors, ``(addr, len)`` pairs naming frames *in the UMEM*.
  :meth:`XskSocket.recv_into` fills one (``n = sock.recv_into(descs)``); ``descs[i]`` is a
  memoryview of frame *i* inside the UMEM (no copy; made only when asked for), and
  ``descs.addr(i)`` / ``descs.length(i)`` index :attr:`XskUmem.view` directly.
  :meth:`XskSocket.recv_batch` does the same into a descriptor array the socket owns.
* An :class:`XskDescs` *owns* the frames it lists until they move on: the next
  :meth:`~XskSocket.recv_into` into it gives them back to the fill ring first (so a plain
  ``while True: n = sock.recv_into(descs)`` loop recycles everything, and the fill ring stays as
  full as it started however many frames pass); :meth:`XskSocket.send_batch` transmits them
  without copying (a received frame can be rewritten in place and sent back);
  :meth:`XskSocket.recycle` returns them to the fill ring, :meth:`XskUmem.release` to the free
  frames.  :meth:`XskUmem.alloc` takes free frames into one, to build frames in place.
* :meth:`XskSocket.echo` and :meth:`XskSocket.forward` never enter Python per frame: a C loop
  (GIL released; run it in a thread to do something else meanwhile) moves frames from RX to TX
  until a duration, a frame count or :meth:`XskSocket.stop`, recycling completions into the
  fill ring, and returns :class:`XskLoopStats`.  Echo is zero-copy (the received descriptor is
  the one transmitted, MACs swapped in place if asked); forwarding to another socket copies each
  frame once into the other UMEM (one socket per UMEM in this version).

docs/xsk.md has the whole picture with examples.
"""

from __future__ import annotations

import errno
import mmap
import select
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from nkframe._bpf import HAVE_LIBXDP, capture_log, check, ffi, lib
from nkframe.errors import InvalidSpec, KernelError, NotSupported

__all__ = ["XskUmem", "XskSocket", "XskDescs", "XskLoopStats", "XDP_COPY", "XDP_ZEROCOPY",
           "XDP_USE_NEED_WAKEUP", "available"]

# linux/if_xdp.h bind flags
XDP_SHARED_UMEM = 1 << 0
XDP_COPY = 1 << 1
XDP_ZEROCOPY = 1 << 2
XDP_USE_NEED_WAKEUP = 1 << 3

_DEFAULT_RING = 2048
_DEFAULT_BATCH = 64


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
    Frames in neither ring nor in anyone's :class:`XskDescs` are *free* (:attr:`free_frames`).
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
        self._closed = True
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
        # The free frames: a stack of chunk addresses in C memory, which the batch functions
        # pop and push without Python.
        self._free_addrs = ffi.new("__u64[]", size_frames)
        ffi.memmove(self._free_addrs,
                    array("Q", range(0, size_frames * frame_size, frame_size)).tobytes(),
                    8 * size_frames)
        self._free = ffi.new("struct nk_xsk_frames *")
        self._free.addr = self._free_addrs
        self._free.count = self._free.cap = size_frames
        self._port = _port(self, None, None, -1, 0)
        self._view: memoryview | None = None
        self._sockets = 0
        self._closed = False

    @property
    def fd(self) -> int:
        self._require_open()
        return lib.xsk_umem__fd(self._umem)

    @property
    def free_frames(self) -> int:
        return self._free.count

    @property
    def view(self) -> memoryview:
        """The whole UMEM as one writable memoryview: frame bytes are
        ``view[addr:addr + length]`` (what ``XskDescs[i]`` returns)."""
        self._require_open()
        if self._view is None:
            self._view = memoryview(self._area)
        return self._view

    def _require_open(self) -> None:
        if self._closed:
            raise KernelError(errno.EBADF, "XSK UMEM: already closed")

    def frame(self, addr: int, length: int):
        """A writable view of ``length`` bytes of the UMEM at ``addr`` (no copy)."""
        return ffi.buffer(self._area_ptr + addr, length)

    def fill(self, count: int | None = None) -> int:
        """Give up to ``count`` free frames (default: as many as fit) to the kernel for RX."""
        self._require_open()
        n = self._free.count if count is None else min(count, self._free.count)
        return lib.nk_xsk_fill(self._port, n) if n > 0 else 0

    def complete(self) -> int:
        """Take back transmitted frames from the completion ring; returns how many."""
        self._require_open()
        return lib.nk_xsk_complete(self._port)

    def alloc(self, descs: XskDescs, count: int | None = None, length: int | None = None) -> int:
        """Take up to ``count`` (default: ``descs.capacity``) free frames into ``descs``, each
        with length ``length`` (default: the frame size), to write frames into in place and
        send with :meth:`XskSocket.send_batch`.  Frames ``descs`` held go back to the free
        frames first.  Returns how many were taken."""
        self._require_open()
        descs._check(self)
        if descs.n:
            self.release(descs)
        count = descs.capacity if count is None else min(count, descs.capacity)
        length = self.frame_size if length is None else length
        if not 0 <= length <= self.frame_size:
            raise InvalidSpec(f"XSK frame length {length} outside 0..{self.frame_size}")
        descs.n = lib.nk_xsk_alloc(self._port, descs._arr, max(count, 0), length)
        return descs.n

    def release(self, descs: XskDescs) -> None:
        """Return the frames ``descs`` holds to the free frames (not to the fill ring)."""
        self._require_open()
        descs._check(self)
        if descs.n:
            lib.nk_xsk_put_back(self._port, descs._arr, descs.n, 0)
            descs.n = 0

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
        if self._view is not None:
            self._view.release()
            self._view = None
        try:
            self._area.close()
        except BufferError:
            pass  # someone still holds a view of a frame: the mapping goes when the last does

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


def _port(umem: XskUmem, rx, tx, fd: int, bind_flags: int):
    """The C view of a socket (or of the UMEM alone, rx/tx NULL) for the batch functions."""
    p = ffi.new("struct nk_xsk_port *")
    p.rx = rx if rx is not None else ffi.NULL
    p.tx = tx if tx is not None else ffi.NULL
    p.fill = umem._fill
    p.comp = umem._comp
    p.free = umem._free
    p.area = ffi.cast("unsigned char *", umem._area_ptr)
    p.area_size = umem.size_frames * umem.frame_size
    p.frame_size = umem.frame_size
    p.flags = lib.NK_XSK_PORT_NEED_WAKEUP if bind_flags & XDP_USE_NEED_WAKEUP else 0
    p.fd = fd
    return p


class XskDescs:
    """A reusable array of up to ``capacity`` descriptors naming frames of ``umem``.

    ``len(descs)`` frames are held (listed) right now.  ``descs[i]`` is a writable memoryview of
    frame *i* inside the UMEM (no copy; valid until the frame moves on), ``descs.addr(i)`` and
    ``descs.length(i)`` its place in :attr:`XskUmem.view`.  The array itself is allocated once;
    receiving into it again reuses it.  See the module docstring for who owns the frames.
    """

    __slots__ = ("umem", "capacity", "n", "_arr")

    def __init__(self, umem: XskUmem, capacity: int = _DEFAULT_BATCH) -> None:
        if capacity < 1:
            raise InvalidSpec(f"XskDescs capacity must be at least 1, got {capacity}")
        self.umem = umem
        self.capacity = capacity
        self.n = 0
        self._arr = ffi.new("struct xdp_desc[]", capacity)

    def _check(self, umem: XskUmem) -> None:
        if self.umem is not umem:
            raise InvalidSpec("XskDescs belongs to another UMEM")

    def __len__(self) -> int:
        return self.n

    def _index(self, i: int) -> int:
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"descriptor {i} of {self.n}")
        return i

    def addr(self, i: int) -> int:
        """Offset of frame *i*'s first byte in the UMEM."""
        return self._arr[self._index(i)].addr

    def length(self, i: int) -> int:
        return self._arr[self._index(i)].len

    def set_length(self, i: int, length: int) -> None:
        """Change frame *i*'s length (after rewriting it in place, before sending it)."""
        i = self._index(i)
        room = self.umem.frame_size - self._arr[i].addr % self.umem.frame_size
        if not 0 <= length <= room:
            raise InvalidSpec(f"frame length {length} outside 0..{room}")
        self._arr[i].len = length

    def __getitem__(self, i: int) -> memoryview:
        d = self._arr[self._index(i)]
        return self.umem.view[d.addr:d.addr + d.len]

    def __iter__(self) -> Iterator[memoryview]:
        view = self.umem.view
        for d in self._arr[0:self.n]:
            yield view[d.addr:d.addr + d.len]

    @property
    def table(self) -> memoryview:
        """The held descriptors' raw bytes, 16 each (``struct xdp_desc``: u64 addr, u32 len,
        u32 options, native order), e.g. for ``numpy.frombuffer``; no copy."""
        return memoryview(ffi.buffer(self._arr, 16 * self.n))

    def __repr__(self) -> str:
        return f"<XskDescs {self.n}/{self.capacity}>"


@dataclass(frozen=True)
class XskLoopStats:
    """What one :meth:`XskSocket.echo` / :meth:`XskSocket.forward` run did."""

    rx: int         # frames taken off the RX ring(s)
    tx: int         # frames queued for transmission
    dropped: int    # received but not queued (TX ring full; forwarding: no free frame)
    completed: int  # transmissions the kernel reported complete
    kicks: int      # TX doorbells (sendto)
    polls: int      # idle waits (poll, 1 ms each at most)
    seconds: float

    @property
    def rx_pps(self) -> float:
        return self.rx / self.seconds if self.seconds > 0 else 0.0

    @property
    def tx_pps(self) -> float:
        return self.tx / self.seconds if self.seconds > 0 else 0.0


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
        self._xsk = None
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
        self._port = _port(umem, self._rx, self._tx, self._fd, bind_flags)
        self._err = ffi.new("int *")
        self._ctl = ffi.new("struct nk_xsk_ctl *")
        self._loop_stats = ffi.new("struct nk_xsk_loop_stats *")
        self._looping = False
        self._descs: XskDescs | None = None
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
        if self._looping:
            raise KernelError(errno.EBUSY, f"AF_XDP socket on {self.ifname}: an echo/forward "
                              "loop runs on it")

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

    def descs(self, capacity: int = _DEFAULT_BATCH) -> XskDescs:
        """A new descriptor array for this socket's UMEM."""
        return XskDescs(self.umem, capacity)

    # -- receive

    def recv_into(self, descs: XskDescs, *, timeout: float = 0.0) -> int:
        """Receive up to ``descs.capacity`` frames into ``descs`` without copying them; returns
        how many (also ``len(descs)``).  Frames ``descs`` still held go back to the fill ring
        first.  With ``timeout`` > 0, waits that long for the first frame."""
        self._require_open()
        descs._check(self.umem)
        port, arr = self._port, descs._arr
        n = lib.nk_xsk_rx_batch(port, arr, descs.n, descs.capacity)
        if n == 0 and timeout > 0 and lib.nk_xsk_wait_rx(port, max(1, int(timeout * 1000))):
            n = lib.nk_xsk_rx_batch(port, arr, 0, descs.capacity)
        descs.n = n
        return n

    def recv_batch(self, batch: int = _DEFAULT_BATCH, *, timeout: float = 0.0) -> XskDescs:
        """Like :meth:`recv_into` into a descriptor array this socket owns (reused: valid until
        the next ``recv_batch``, which recycles its frames)."""
        d = self._descs
        if d is None or d.capacity != batch:
            if d is not None:
                self.recycle(d)
            d = self._descs = XskDescs(self.umem, batch)
        self.recv_into(d, timeout=timeout)
        return d

    def recycle(self, descs: XskDescs) -> None:
        """Give the frames ``descs`` holds back to the fill ring (to receive into again)."""
        self._require_open()
        descs._check(self.umem)
        if descs.n:
            lib.nk_xsk_put_back(self._port, descs._arr, descs.n, 1)
            descs.n = 0

    def recv(self, batch: int = _DEFAULT_BATCH, *, timeout: float = 0.0) -> list[bytes]:
        """Up to ``batch`` received frames (copied out), refilling the fill ring with their
        frames.  With ``timeout`` > 0, waits that long for the first frame."""
        d = self.recv_batch(batch, timeout=timeout)
        if not d.n:
            return []
        view = self.umem.view
        frames = [view[x.addr:x.addr + x.len].tobytes() for x in d._arr[0:d.n]]
        self.recycle(d)
        return frames

    # -- transmit

    def _raise_kick(self) -> None:
        err = self._err[0]
        if err < 0:
            raise KernelError(-err, f"kick AF_XDP TX on {self.ifname} queue {self.queue_id}")

    def send_batch(self, descs: XskDescs) -> int:
        """Transmit the frames ``descs`` holds, without copying (they are in the UMEM already:
        received, or taken with :meth:`XskUmem.alloc` and written in place).  Queues as many as
        the TX ring takes and returns how many; those leave ``descs`` (they come back to the
        free frames when the kernel completes them), the rest stay in it, moved to the front."""
        self._require_open()
        descs._check(self.umem)
        if not descs.n:
            return 0
        k = lib.nk_xsk_tx_descs(self._port, descs._arr, descs.n, self._err)
        descs.n -= k
        self._raise_kick()
        return k

    def send(self, frames: Iterable[bytes]) -> int:
        """Queue frames (copied into free UMEM frames) for transmission and kick the kernel;
        returns how many were queued (the first ones: the TX ring or the free frames may take
        fewer)."""
        self._require_open()
        if not isinstance(frames, (list, tuple)):
            frames = list(frames)
        if not frames:
            self.umem.complete()
            return 0
        lens = array("I", map(len, frames))
        if max(lens) > self.umem.frame_size:
            big = max(lens)
            raise InvalidSpec(f"frame of {big} bytes does not fit a {self.umem.frame_size} "
                              "byte UMEM frame")
        data = b"".join(frames)
        got = lib.nk_xsk_tx_copy(self._port, ffi.from_buffer(data), ffi.from_buffer("__u32[]", lens),
                                 len(frames), self._err)
        self._raise_kick()
        if got == 0 and self.umem.free_frames == 0:
            raise KernelError(errno.ENOBUFS, f"AF_XDP send on {self.ifname}: no free frame")
        return got

    def kick(self) -> None:
        """Ask the kernel to process the TX ring (copy mode needs this for every batch; the
        send methods do it)."""
        self._require_open()
        ret = lib.nk_xsk_kick(self._port, ffi.NULL)
        if ret < 0:
            raise KernelError(-ret, f"kick AF_XDP TX on {self.ifname} queue {self.queue_id}")

    def complete(self) -> int:
        """Reclaim transmitted frames; returns how many."""
        return self.umem.complete()

    # -- loops in C

    def echo(self, duration: float | None = None, count: int | None = None, *,
             swap_macs: bool = True, batch: int = _DEFAULT_BATCH) -> XskLoopStats:
        """Send every received frame back out of the same socket, in C, zero-copy (the received
        descriptor is the one transmitted), with source and destination MACs swapped in place
        if ``swap_macs``; completions go straight back to the fill ring.

        Runs until ``duration`` seconds have passed, ``count`` frames were received or
        :meth:`stop` is called (with neither limit, only :meth:`stop` ends it).  Busy-polls
        while frames come, waits in poll() when idle.  The GIL is released meanwhile; the
        socket must not be used otherwise until it returns."""
        flags = lib.NK_XSK_LOOP_SWAP_MACS if swap_macs else 0
        return self._loop(self, duration, count, flags, batch)

    def forward(self, other: XskSocket, duration: float | None = None,
                count: int | None = None, *, swap_macs: bool = False,
                both_ways: bool = False, batch: int = _DEFAULT_BATCH) -> XskLoopStats:
        """Transmit every frame this socket receives on ``other`` (and, with ``both_ways``,
        every frame ``other`` receives on this one), in C.  Each frame is copied once into a
        free frame of the other socket's UMEM; the received frame goes straight back to the
        fill ring.  A frame that finds no free frame or no room in the TX ring is dropped.
        Limits and threading as for :meth:`echo`."""
        if other is self:
            raise InvalidSpec("forward to the same socket: use echo()")
        flags = ((lib.NK_XSK_LOOP_SWAP_MACS if swap_macs else 0)
                 | (lib.NK_XSK_LOOP_BIDIR if both_ways else 0))
        return self._loop(other, duration, count, flags, batch)

    def stop(self) -> None:
        """End the echo/forward loop running on this socket (from another thread).  A stop
        that comes before the loop starts ends it at once."""
        self._ctl.stop = 1

    def _loop(self, other: XskSocket, duration: float | None, count: int | None,
              flags: int, batch: int) -> XskLoopStats:
        self._require_open()
        if other is not self:
            other._require_open()
        if not 1 <= batch <= lib.NK_XSK_MAX_BATCH:
            raise InvalidSpec(f"batch must be in 1..{lib.NK_XSK_MAX_BATCH}, got {batch}")
        if duration is not None and duration <= 0:
            raise InvalidSpec(f"duration must be positive, got {duration}")
        if count is not None and count <= 0:
            raise InvalidSpec(f"count must be positive, got {count}")
        st = self._loop_stats
        self._looping = other._looping = True
        try:
            ret = lib.nk_xsk_loop(self._port, other._port, batch, flags,
                                  duration or 0.0, count or 0, self._ctl, st)
        finally:
            self._looping = other._looping = False
            self._ctl.stop = 0
        stats = XskLoopStats(st.rx, st.tx, st.dropped, st.completed, st.kicks, st.polls,
                             st.seconds)
        if ret < 0:
            raise KernelError(-ret, f"AF_XDP loop on {self.ifname} queue {self.queue_id} "
                              f"(after {stats.rx} frames)")
        return stats

    def statistics(self) -> dict[str, int]:
        """The kernel's counters for this socket (XDP_STATISTICS): rx_dropped,
        rx_invalid_descs, tx_invalid_descs, rx_ring_full, rx_fill_ring_empty_descs,
        tx_ring_empty_descs."""
        self._require_open()
        out = ffi.new("struct xdp_statistics *")
        check(lib.nk_xsk_statistics(self._fd, out), f"XDP_STATISTICS of {self.ifname}")
        return {k: getattr(out, k) for k in ("rx_dropped", "rx_invalid_descs",
                                             "tx_invalid_descs", "rx_ring_full",
                                             "rx_fill_ring_empty_descs", "tx_ring_empty_descs")}

    def close(self) -> None:
        if self._xsk is None:
            return
        if self._looping:
            raise KernelError(errno.EBUSY, f"AF_XDP socket on {self.ifname}: an echo/forward "
                              "loop runs on it; stop() it first")
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
