"""AF_XDP from Python (``nkframe.xsk``) on a veth pair in copy mode, beside the kernel-only rate
with the same sender and receiver device.

* sender (kernel only): ``BPF_PROG_TEST_RUN`` in live-frames mode on the sending veth end, an
  XDP program returning ``XDP_TX``: each repetition's 64-byte UDP frame leaves through the
  device.  This is how xdp-trafficgen sends; Debian's xdp-tools 1.3.1 fails to load on this
  kernel (its tp_btf programs name a tracepoint 6.18 no longer has), so the harness does it.
  Where the kernel refuses live-frames runs (EPERM, e.g. in a sandbox) every figure uses the
  fallback sender instead, an AF_PACKET socket bypassing the qdisc (``sendmmsg`` of 1024
  frames), and the run records a note saying so.  The sender runs on CPU 0, the Python side on
  CPU 1 (two CPUs or more).
* receiver (kernel only): an XDP program on the receiving end that counts and drops.
  ``afxdp.kernel`` is that counter's rate: the most this pair moves with this sender.
* ``afxdp.rx.python``: the receiver's program redirects every frame to an AF_XDP socket and a
  Python loop receives batches of descriptors (``XskSocket.recv_into``, 64 per call: frames stay
  in the UMEM, the next call recycles them) and counts them; same sender.
  ``afxdp.rx.offered`` is what the redirecting program saw meanwhile.
* ``afxdp.tx.python``: a Python loop sends through an AF_XDP socket on the sending end
  (``XskSocket.send``, a list of 64 frames per call, copied into the UMEM in one C call); the
  receiving end's count-and-drop program counts what arrived.
* ``afxdp.echo.python``: the receiver's socket runs ``XskSocket.echo`` (the C loop: each
  received descriptor goes straight back out of the same socket, MACs swapped, no copy and no
  Python per frame) while the sender sends as for ``afxdp.kernel``; a second instance of the
  count-and-drop program, attached to the *sending* end, counts the frames that come back.

Rates are frames per second over a window after one second of warm-up; the figure is the median
of ROUNDS windows, rounds interleaved.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from nkbench.core import Recorder, Stat
from nkbench.topo import Scope, in_netns, veth_pair

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "bpf" / "xdp_bench.c"
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
ROUNDS, WINDOW = 3, 2.0


def build(out_dir: str) -> str:
    obj = os.path.join(out_dir, "xdp_bench.o")
    subprocess.run([os.environ.get("CLANG", "clang"), "-O2", "-g", "-Wall", "-target", "bpf",
                    "-I/usr/include/x86_64-linux-gnu", "-c", str(SRC), "-o", obj], check=True,
                   capture_output=True)
    return obj


def frame(dmac: bytes, smac: bytes, src: str = "198.18.0.1", dst: str = "198.18.0.2") -> bytes:
    """A 64-byte UDP frame (60 on the wire before the FCS the device would add)."""
    import ipaddress

    payload = b"\0" * 18
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    s = sum(struct.unpack("!10H", ip))
    s = (s & 0xFFFF) + (s >> 16)
    ip = ip[:10] + struct.pack("!H", ~s & 0xFFFF) + ip[12:]
    return dmac + smac + b"\x08\x00" + ip + udp


def _mac(ns: str, dev: str) -> bytes:
    from nkframe.netlink import links

    return bytes.fromhex(links.get_link(dev, netns=ns).address.replace(":", ""))


def sender_main(obj: str, ifname: str, frame_hex: str, seconds: float) -> int:
    """Runs in the sender's netns (a child process): live-frames test runs for ``seconds``."""
    from nkframe import bpf
    from nkframe._bpf import ffi, lib

    data = bytes.fromhex(frame_hex)
    with bpf.BpfObject.open(obj) as o:
        o.load()
        prog = o.programs["xdp_tx"]
        ifindex = socket.if_nametoindex(ifname)
        ctx = struct.pack("=6I", 0, len(data), 0, ifindex, 0, 0)  # struct xdp_md
        buf, cbuf = ffi.from_buffer(data), ffi.from_buffer(ctx)
        opts = ffi.new("struct bpf_test_run_opts *")
        sent, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            opts.sz = ffi.sizeof("struct bpf_test_run_opts")
            opts.data_in, opts.data_size_in = buf, len(data)
            opts.ctx_in, opts.ctx_size_in = cbuf, len(ctx)
            opts.repeat, opts.flags = 100_000, BPF_F_TEST_XDP_LIVE_FRAMES
            ret = lib.bpf_prog_test_run_opts(prog.fd, opts)
            if ret < 0:
                print(json.dumps({"error": os.strerror(-ret)}), flush=True)
                return 1
            sent += 100_000
        print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}), flush=True)
    return 0


# Two CPUs or more: the sender (and the receiving device's softirq work it raises) on CPU 0, the
# Python side (its loop and the softirq work its sends raise) on CPU 1, the way the throughput
# section pins iperf3; unpinned, the scheduler's placement moved single rounds by 2x.
PIN = (os.cpu_count() or 1) >= 2
SENDER_CPU, PYTHON_CPU = 0, 1


class _pinned:
    """Run the calling thread on ``cpu`` inside the block (Linux: affinity is per thread)."""

    def __init__(self, cpu: int):
        self.cpu = cpu
        self.saved = None

    def __enter__(self) -> None:
        if PIN:
            self.saved = os.sched_getaffinity(0)
            os.sched_setaffinity(0, {self.cpu})

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            os.sched_setaffinity(0, self.saved)


SOL_PACKET, PACKET_QDISC_BYPASS = 263, 20  # bits/socket.h, linux/if_packet.h
MMSG_BATCH = 1024


def sender_packet_main(ifname: str, frame_hex: str, seconds: float) -> int:
    """The fallback sender, for where live-frames test runs are refused: an AF_PACKET socket
    that bypasses the qdisc, ``MMSG_BATCH`` copies of the frame per ``sendmmsg``.  The kernel
    does all per-frame work; Python makes one call per batch."""
    import ctypes

    data = bytes.fromhex(frame_hex)
    libc = ctypes.CDLL(None, use_errno=True)

    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    class msghdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                    ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                    ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]

    class mmsghdr(ctypes.Structure):
        _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]

    buf = ctypes.create_string_buffer(data, len(data))
    iov = iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    msgs = (mmsghdr * MMSG_BATCH)()
    for m in msgs:
        m.hdr.iov = ctypes.pointer(iov)
        m.hdr.iovlen = 1
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: receives nothing
    s.bind((ifname, 0))
    s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    sendmmsg, fd = libc.sendmmsg, s.fileno()
    sent, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        n = sendmmsg(fd, msgs, MMSG_BATCH, 0)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOBUFS, errno.EAGAIN):
                continue
            print(json.dumps({"error": os.strerror(err)}), flush=True)
            return 1
        sent += n
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}), flush=True)
    return 0


def live_frames_allowed(obj: str) -> str | None:
    """None if a live-frames test run works here, else why not (the kernel's error)."""
    from nkframe import bpf
    from nkframe._bpf import ffi, lib

    data = bytes(60)
    with bpf.BpfObject.open(obj) as o:
        o.load()
        buf = ffi.from_buffer(data)
        opts = ffi.new("struct bpf_test_run_opts *")
        opts.sz = ffi.sizeof("struct bpf_test_run_opts")
        opts.data_in, opts.data_size_in = buf, len(data)
        opts.repeat, opts.flags = 1, BPF_F_TEST_XDP_LIVE_FRAMES
        ret = lib.bpf_prog_test_run_opts(o.programs["xdp_count_drop"].fd, opts)  # drops: sends nothing
    return None if ret == 0 else f"{os.strerror(-ret)} ({errno.errorcode.get(-ret, -ret)})"


class Rig:
    def __init__(self, scope: Scope):
        from nkframe import bpf, netns
        from nkframe.netlink import links

        self.scope = scope
        self.a, self.b = veth_pair(scope)  # a sends on eth0, b receives on eth0
        self.obj_path = build(scope.tmpdir("nkbench-xdp-"))
        self.obj = bpf.BpfObject.open(self.obj_path)
        self.obj.load()
        scope.defer("xdp object", self.obj.close)
        self.counter = self.obj.maps["frames"]
        self.xsks = self.obj.maps["xsks"]
        self.ifindex_b = links.get_link("eth0", netns=self.b).ifindex
        self.ifindex_a = links.get_link("eth0", netns=self.a).ifindex
        self.frame = frame(_mac(self.b, "eth0"), _mac(self.a, "eth0"))
        # A second instance of the object (maps of its own) counts what comes back to the
        # sending end in the echo case.
        self.back = bpf.BpfObject.open(self.obj_path)
        self.back.load()
        scope.defer("xdp object (sender side)", self.back.close)
        self.netns = netns
        self.bpf = bpf
        self.live_refused = live_frames_allowed(self.obj_path)
        self.sender = "live-frames" if self.live_refused is None else "af_packet"

    def receiver(self, prog: str) -> None:
        with self.netns.enter(self.b):
            self.bpf.xdp_attach(self.ifindex_b, self.obj.programs[prog].fd)
        self.scope.defer("xdp on receiver", self.detach)

    def detach(self) -> None:
        with self.netns.enter(self.b):
            try:
                self.bpf.xdp_detach(self.ifindex_b)
            except Exception:  # noqa: BLE001 - the namespace may be gone already
                pass

    def count(self) -> int:
        return sum(struct.unpack("=Q", v)[0] for v in self.counter.lookup_percpu(b"\0\0\0\0"))

    def count_back(self) -> int:
        m = self.back.maps["frames"]
        return sum(struct.unpack("=Q", v)[0] for v in m.lookup_percpu(b"\0\0\0\0"))

    def sender_side_counter(self) -> None:
        with self.netns.enter(self.a):
            self.bpf.xdp_attach(self.ifindex_a, self.back.programs["xdp_count_drop"].fd)
        self.scope.defer("xdp on sender", self.detach_sender_side)

    def detach_sender_side(self) -> None:
        with self.netns.enter(self.a):
            try:
                self.bpf.xdp_detach(self.ifindex_a)
            except Exception:  # noqa: BLE001 - the namespace may be gone already
                pass

    def start_sender(self, seconds: float) -> subprocess.Popen:
        if self.sender == "live-frames":
            code = ("import sys; sys.path.insert(0, %r); from nkbench.afxdp import sender_main; "
                    "sys.exit(sender_main(*sys.argv[1:3], sys.argv[3], float(sys.argv[4])))") % str(HERE.parent)
            args = [self.obj_path, "eth0", self.frame.hex(), str(seconds)]
        else:
            code = ("import sys; sys.path.insert(0, %r); from nkbench.afxdp import sender_packet_main; "
                    "sys.exit(sender_packet_main(sys.argv[1], sys.argv[2], float(sys.argv[3])))") % str(HERE.parent)
            args = ["eth0", self.frame.hex(), str(seconds)]
        pin = ("taskset", "-c", str(SENDER_CPU)) if PIN else ()
        return self.scope.popen(in_netns(self.a, *pin, sys.executable, "-c", code, *args),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def kernel_rate(self) -> float:
        """Sender -> count-and-drop: frames per second arriving."""
        self.receiver("xdp_count_drop")
        p = self.start_sender(WINDOW + 2)
        try:
            time.sleep(1.0)
            c0, t0 = self.count(), time.monotonic()
            time.sleep(WINDOW)
            c1, t1 = self.count(), time.monotonic()
        finally:
            out, err = p.communicate(timeout=30)
            self.detach()
        if p.returncode:
            raise RuntimeError(f"live-frames sender failed: {out.strip()} {err.strip()[-500:]}")
        return (c1 - c0) / (t1 - t0)

    def socket(self, ns: str):
        """A UMEM of 4096 frames and a copy-mode socket on queue 0 of eth0 in ``ns``.  The kernel
        unbinds a closed socket from its queue a moment later (the XSKMAP held it): until
        then a new bind answers EBUSY, so that is retried for a while."""
        from nkframe import xsk
        from nkframe.errors import KernelError

        end = time.monotonic() + 5
        while True:
            # Both inside the namespace: the UMEM's socket is the first XSK, bound by ifindex
            # in the namespace it was created in.
            with self.netns.enter(ns):
                umem = xsk.XskUmem(4096)
                try:
                    return umem, xsk.XskSocket("eth0", 0, umem, bind_flags=xsk.XDP_COPY)
                except KernelError as e:
                    umem.close()
                    if e.errno != errno.EBUSY or time.monotonic() > end:
                        raise
            time.sleep(0.05)

    def python_rx(self) -> tuple[float, float]:
        """Sender -> XSK -> Python: (frames/s received by Python, frames/s the XDP
        program saw)."""
        umem, sock = self.socket(self.b)
        descs = sock.descs(64)
        try:
            sock.update_xskmap(self.xsks.fd)
            self.receiver("xdp_count_xsk")
            p = self.start_sender(WINDOW + 2)
            try:
                recv_into = sock.recv_into
                with _pinned(PYTHON_CPU):
                    end = time.monotonic() + 1.0
                    while time.monotonic() < end:
                        recv_into(descs, timeout=0.01)
                    got, c0, t0 = 0, self.count(), time.monotonic()
                    end = t0 + WINDOW
                    while time.monotonic() < end:
                        got += recv_into(descs, timeout=0.01)  # waits in poll() only when empty
                    t1, c1 = time.monotonic(), self.count()
            finally:
                p.communicate(timeout=30)
                self.detach()
            return got / (t1 - t0), (c1 - c0) / (t1 - t0)
        finally:
            self.xsks.delete(b"\0\0\0\0")
            sock.recycle(descs)
            sock.close()
            umem.close()

    def python_tx(self) -> float:
        """Python -> XSK on the sending end -> count-and-drop: frames/s arriving."""
        self.receiver("xdp_count_drop")
        umem, sock = self.socket(self.a)
        batch = [self.frame] * 64
        try:
            def pump(seconds: float) -> None:
                send = sock.send
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    send(batch)

            with _pinned(PYTHON_CPU):
                pump(1.0)
                c0, t0 = self.count(), time.monotonic()
                pump(WINDOW)
                c1, t1 = self.count(), time.monotonic()
            return (c1 - c0) / (t1 - t0)
        finally:
            sock.close()
            umem.close()
            self.detach()

    def python_echo(self) -> tuple[float, object]:
        """Sender -> XSK -> ``XskSocket.echo`` -> back to the sending end, counted
        there: (frames/s echoed back, the loop's own counts)."""
        umem, sock = self.socket(self.b)
        result: dict = {}
        echo: threading.Thread | None = None

        def loop() -> None:
            try:
                with _pinned(PYTHON_CPU):
                    result["stats"] = sock.echo(duration=WINDOW + 3, swap_macs=True)
            except BaseException as e:  # noqa: BLE001 - reported by the caller
                result["error"] = e

        try:
            sock.update_xskmap(self.xsks.fd)
            self.receiver("xdp_count_xsk")
            self.sender_side_counter()
            echo = threading.Thread(target=loop, name="xsk-echo", daemon=True)
            echo.start()
            p = self.start_sender(WINDOW + 2)
            try:
                time.sleep(1.0)
                c0, t0 = self.count_back(), time.monotonic()
                time.sleep(WINDOW)
                c1, t1 = self.count_back(), time.monotonic()
            finally:
                p.communicate(timeout=30)
                sock.stop()
                echo.join(timeout=30)
                self.detach()
                self.detach_sender_side()
            if "error" in result:
                raise result["error"]
            return (c1 - c0) / (t1 - t0), result.get("stats")
        finally:
            self.xsks.delete(b"\0\0\0\0")
            if echo is None or not echo.is_alive():
                sock.close()
                umem.close()


def run(rec: Recorder, scope: Scope, *, quick: bool = False) -> None:
    from nkframe import xsk

    global WINDOW
    rec.section = "afxdp"
    if not xsk.available():
        rec.skip("afxdp", "nkframe was built without libxdp")
        return
    if not shutil.which(os.environ.get("CLANG", "clang")):
        rec.skip("afxdp", "no clang to build the XDP programs")
        return
    rounds = 1 if quick else ROUNDS
    if quick:
        WINDOW = 0.5
    rec.log(f"AF_XDP: {rounds} rounds of {WINDOW} s windows, 64-byte frames, veth copy mode")
    rig = Rig(scope)
    if rig.live_refused:
        rec.skip("afxdp live-frames sender",
                 f"BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES was refused here: {rig.live_refused}; "
                 f"every AF_XDP figure of this run used the fallback sender (AF_PACKET, PACKET_QDISC_BYPASS, "
                 f"{MMSG_BATCH} frames per sendmmsg)")
    rec.log(f"AF_XDP sender: {rig.sender}")
    k, rx, seen, tx, echo = [], [], [], [], []
    for r in range(rounds):
        k.append(rig.kernel_rate() / 1e6)
        got, offered = rig.python_rx()
        rx.append(got / 1e6)
        seen.append(offered / 1e6)
        tx.append(rig.python_tx() / 1e6)
        back, st = rig.python_echo()
        echo.append(back / 1e6)
        rec.log(f"round {r + 1}: kernel {k[-1]:.2f} Mpps, Python rx {rx[-1]:.3f} Mpps (XDP saw {seen[-1]:.2f}), "
                f"Python tx {tx[-1]:.3f} Mpps, echo {echo[-1]:.3f} Mpps back at the sender "
                f"(loop: {st.rx} in, {st.tx} out, {st.dropped} dropped, {st.kicks} kicks in {st.seconds:.1f} s)")
    base = rec.add("afxdp.kernel", Stat.of(k), "Mpps", better="higher")
    rec.add("afxdp.rx.python", Stat.of(rx), "Mpps", baseline=base, better="higher")
    rec.add("afxdp.rx.offered", Stat.of(seen), "Mpps", baseline=base, better="higher")
    rec.add("afxdp.tx.python", Stat.of(tx), "Mpps", baseline=base, better="higher")
    rec.add("afxdp.echo.python", Stat.of(echo), "Mpps", baseline=base, better="higher")
