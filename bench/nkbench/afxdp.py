"""AF_XDP from Python (``nkframe.xsk``) on a veth pair in copy mode, beside the kernel-only rate
with the same sender and receiver device.

* sender (kernel only): ``BPF_PROG_TEST_RUN`` in live-frames mode on the sending veth end, an
  XDP program returning ``XDP_TX``: each repetition's 64-byte UDP frame leaves through the
  device.  This is how xdp-trafficgen sends; Debian's xdp-tools 1.3.1 fails to load on this
  kernel (its tp_btf programs name a tracepoint 6.18 no longer has), so the harness does it.
* receiver (kernel only): an XDP program on the receiving end that counts and drops.
  ``afxdp.kernel`` is that counter's rate: the most this pair moves with this sender.
* ``afxdp.rx.python``: the receiver's program redirects every frame to an AF_XDP socket and a
  Python loop (``XskSocket.recv``) counts what it gets; same sender.
* ``afxdp.tx.python``: a Python loop sends through an AF_XDP socket on the sending end
  (``XskSocket.send``); the receiving end's count-and-drop program counts what arrived.

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
        self.netns = netns
        self.bpf = bpf

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

    def start_sender(self, seconds: float) -> subprocess.Popen:
        code = ("import sys; sys.path.insert(0, %r); from nkbench.afxdp import sender_main; "
                "sys.exit(sender_main(*sys.argv[1:3], sys.argv[3], float(sys.argv[4])))") % str(HERE.parent)
        return self.scope.popen(in_netns(self.a, sys.executable, "-c", code, self.obj_path, "eth0", self.frame.hex(), str(seconds)),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def kernel_rate(self) -> float:
        """Live-frames sender -> count-and-drop: frames per second arriving."""
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

    def python_rx(self) -> tuple[float, float]:
        """Live-frames sender -> XSK -> Python: (frames/s received by Python, frames/s the XDP
        program saw)."""
        from nkframe import xsk

        with self.netns.enter(self.b):
            umem = xsk.XskUmem(4096)
            sock = xsk.XskSocket("eth0", 0, umem, bind_flags=xsk.XDP_COPY)
        try:
            sock.update_xskmap(self.xsks.fd)
            self.receiver("xdp_count_xsk")
            p = self.start_sender(WINDOW + 2)
            try:
                end = time.monotonic() + 1.0
                while time.monotonic() < end:
                    sock.recv(64)
                got, c0, t0 = 0, self.count(), time.monotonic()
                end = t0 + WINDOW
                while time.monotonic() < end:
                    got += len(sock.recv(64))
                t1, c1 = time.monotonic(), self.count()
            finally:
                p.communicate(timeout=30)
                self.detach()
            return got / (t1 - t0), (c1 - c0) / (t1 - t0)
        finally:
            sock.close()
            umem.close()
            self.xsks.delete(b"\0\0\0\0")

    def python_tx(self) -> float:
        """Python -> XSK on the sending end -> count-and-drop: frames/s arriving."""
        from nkframe import xsk
        from nkframe.errors import KernelError

        self.receiver("xdp_count_drop")
        with self.netns.enter(self.a):
            umem = xsk.XskUmem(4096)
            sock = xsk.XskSocket("eth0", 0, umem, bind_flags=xsk.XDP_COPY)
        batch = [self.frame] * 64
        try:
            def pump(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    try:
                        sock.send(batch)
                    except KernelError as e:
                        if e.errno != errno.ENOBUFS:
                            raise
                        sock.complete()

            pump(1.0)
            c0, t0 = self.count(), time.monotonic()
            pump(WINDOW)
            c1, t1 = self.count(), time.monotonic()
            return (c1 - c0) / (t1 - t0)
        finally:
            sock.close()
            umem.close()
            self.detach()


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
    k, rx, seen, tx = [], [], [], []
    for r in range(rounds):
        k.append(rig.kernel_rate() / 1e6)
        got, offered = rig.python_rx()
        rx.append(got / 1e6)
        seen.append(offered / 1e6)
        tx.append(rig.python_tx() / 1e6)
        rec.log(f"round {r + 1}: kernel {k[-1]:.2f} Mpps, Python rx {rx[-1]:.3f} Mpps (XDP saw {seen[-1]:.2f}), Python tx {tx[-1]:.3f} Mpps")
    base = rec.add("afxdp.kernel", Stat.of(k), "Mpps", better="higher")
    rec.add("afxdp.rx.python", Stat.of(rx), "Mpps", baseline=base, better="higher")
    rec.add("afxdp.rx.offered", Stat.of(seen), "Mpps", baseline=base, better="higher")
    rec.add("afxdp.tx.python", Stat.of(tx), "Mpps", baseline=base, better="higher")
