"""AF_XDP through nkframe.xsk on a veth pair in copy mode.

Our XDP filter (bpf/test_xsk.c) redirects UDP to one port into the XSKMAP and passes the rest,
so ARP keeps working and other traffic still reaches the stack.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import nkframe
from nkframe import bpf, xsk
from nkframe._bpf import ffi, lib
from nkframe.errors import InvalidSpec, KernelError, NotSupported

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not xsk.available(), reason="nkframe built without libxdp"),
]

XSK_O = Path(nkframe.__file__).parent / "_objs" / "test_xsk.o"
PORT = 5555
A_IP, B_IP = "198.51.100.1", "198.51.100.2"


def _mac(ns: str, dev: str) -> bytes:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", dev], capture_output=True,
                         text=True, check=True).stdout
    return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))


class Pair:
    def __init__(self, ns_a: str, ns_b: str) -> None:
        self.ns_a, self.ns_b = ns_a, ns_b
        self.ifindex = __import__("socket").if_nametoindex("nka")

    def in_b(self, code: str, *args: str, timeout: float = 30) -> subprocess.Popen:
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns_b}", sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def send_udp_from_b(self, port: int, payloads: list[bytes], gap: float = 0.05) -> None:
        code = (
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for p in sys.argv[3:]:\n"
            f"    s.sendto(bytes.fromhex(p), ('{A_IP}', int(sys.argv[1])))\n"
            "    time.sleep(float(sys.argv[2]))\n"
        )
        proc = self.in_b(code, str(port), str(gap), *(p.hex() for p in payloads))
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err


@pytest.fixture
def pair():
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"nkt-xska-{tag}", f"nkt-xskb-{tag}"
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    made = []
    try:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
        subprocess.run(["ip", "-n", ns_a, "link", "add", "nka", "type", "veth", "peer", "name",
                        "nkb", "netns", ns_b], check=True)
        subprocess.run(["ip", "-n", ns_a, "addr", "add", f"{A_IP}/24", "dev", "nka"], check=True)
        subprocess.run(["ip", "-n", ns_b, "addr", "add", f"{B_IP}/24", "dev", "nkb"], check=True)
        for ns, dev in ((ns_a, "nka"), (ns_b, "nkb"), (ns_a, "lo"), (ns_b, "lo")):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        fd = os.open(f"/run/netns/{ns_a}", os.O_RDONLY)
        try:
            assert lib.setns(fd, lib.CLONE_NEWNET) == 0, ffi.errno
        finally:
            os.close(fd)
        try:
            yield Pair(ns_a, ns_b)
        finally:
            if lib.setns(home, lib.CLONE_NEWNET) != 0:
                raise RuntimeError("could not return the test thread to its netns")
    finally:
        os.close(home)
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def filter_prog(pair):
    """test_xsk.o loaded with cfg_port=PORT and attached in generic mode to nka."""
    with bpf.BpfObject.open(XSK_O) as obj:
        obj.set_global("cfg_port", struct.pack("<H", PORT))
        obj.load()
        bpf.xdp_attach(pair.ifindex, obj.programs["xsk_udp"].fd, bpf.XDP_FLAGS_SKB_MODE)
        try:
            yield obj
        finally:
            bpf.xdp_detach(pair.ifindex, bpf.XDP_FLAGS_SKB_MODE)


def _recv_all(sock: xsk.XskSocket, want: int, deadline: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + deadline
    while len(got) < want and time.monotonic() < end:
        got += sock.recv(64, timeout=0.2)
    return got


def _udp_payload(frame: bytes) -> tuple[int, bytes]:
    assert frame[12:14] == b"\x08\x00"
    ihl = (frame[14] & 0x0F) * 4
    udp = 14 + ihl
    dport, length = struct.unpack("!2xHH", frame[udp:udp + 6])
    return dport, frame[udp + 8:udp + length]


def test_umem_validation():
    with pytest.raises(InvalidSpec):
        xsk.XskUmem(64, 3000)
    with xsk.XskUmem(64, 2048) as umem:
        assert umem.free_frames == 64
        assert umem.fd >= 0


def test_zero_copy_on_veth_is_refused(pair):
    """The kernel's EOPNOTSUPP becomes NotSupported naming the driver and what it lacks."""
    with xsk.XskUmem(64) as umem:
        with pytest.raises(NotSupported) as ei:
            xsk.XskSocket("nka", 0, umem, bind_flags=xsk.XDP_ZEROCOPY)
        assert umem._sockets == 0
    assert ei.value.feature == "af_xdp_zerocopy"
    assert "driver veth" in ei.value.reason and "lacks xsk-zerocopy" in ei.value.reason, ei.value.reason


def test_receive_redirected_udp(pair, filter_prog):
    payloads = [f"hello {i}".encode() for i in range(5)]
    with xsk.XskUmem(256) as umem:
        with xsk.XskSocket("nka", 0, umem, bind_flags=xsk.XDP_COPY) as sock:
            sock.update_xskmap(filter_prog.maps["xsks"].fd)
            # Another port is not ours: the filter passes it to the stack.
            pair.send_udp_from_b(PORT + 1, [b"not for xsk"])
            assert sock.recv(64, timeout=0.3) == []
            pair.send_udp_from_b(PORT, payloads)
            frames = _recv_all(sock, len(payloads))
        hits = struct.unpack("<Q", filter_prog.maps["xsk_hits"].lookup(bytes(4)))[0]
    assert [_udp_payload(f) for f in frames] == [(PORT, p) for p in payloads]
    assert hits == len(payloads)


def test_receive_refills_beyond_ring_size(pair, filter_prog):
    """More datagrams than UMEM frames: works only if recv() refills the fill ring."""
    with xsk.XskUmem(16) as umem:  # 8 frames in the fill ring
        with xsk.XskSocket("nka", 0, umem, rx_size=8, tx_size=8) as sock:
            sock.update_xskmap(filter_prog.maps["xsks"].fd)
            got = []
            for round_ in range(4):
                batch = [f"r{round_}-{i}".encode() for i in range(6)]
                pair.send_udp_from_b(PORT, batch)
                got += [_udp_payload(f)[1] for f in _recv_all(sock, len(batch))]
    assert len(got) == 24


def test_transmit_reaches_the_peer(pair):
    listener = pair.in_b(
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('{B_IP}', {PORT}))\n"
        "s.settimeout(10)\n"
        "print('ready', flush=True)\n"
        "data, addr = s.recvfrom(2048)\n"
        "print(data.hex(), addr[0], flush=True)\n")
    try:
        assert listener.stdout.readline().strip() == "ready"
        payload = b"from af_xdp"
        frame = _udp_frame(_mac(pair.ns_b, "nkb"), _mac(pair.ns_a, "nka"), A_IP, B_IP, 4242,
                           PORT, payload)
        with xsk.XskUmem(64) as umem:
            with xsk.XskSocket("nka", 0, umem) as sock:
                assert sock.send([frame]) == 1
                out, err = listener.communicate(timeout=15)
                deadline = time.monotonic() + 2
                while umem.free_frames < 64 - 32 and time.monotonic() < deadline:
                    sock.complete()
                    time.sleep(0.01)
                # 32 frames sit in the fill ring; the sent one came back through completion.
                assert umem.free_frames == 32
        assert listener.returncode == 0, err
        data_hex, src = out.split()
        assert bytes.fromhex(data_hex) == payload and src == A_IP
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _udp_frame(dst_mac: bytes, src_mac: bytes, src_ip: str, dst_ip: str, sport: int,
               dport: int, payload: bytes) -> bytes:
    import socket

    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload  # no UDP csum
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


# ------------------------------------------------------------------------------------------
# the batch API


def test_recv_into_batches_are_what_was_sent(pair, filter_prog):
    """Descriptors received in batches name exactly the frames sent, in order, inside the UMEM."""
    payloads = [f"batch {i:03d}".encode() for i in range(40)]
    with xsk.XskUmem(256) as umem:
        with xsk.XskSocket("nka", 0, umem) as sock:
            sock.update_xskmap(filter_prog.maps["xsks"].fd)
            pair.send_udp_from_b(PORT, payloads, gap=0.002)
            descs = sock.descs(16)
            got, sizes = [], []
            end = time.monotonic() + 5
            while len(got) < len(payloads) and time.monotonic() < end:
                n = sock.recv_into(descs, timeout=0.2)
                assert n == len(descs) <= 16
                sizes.append(n)
                for i in range(n):
                    view = descs[i]
                    assert isinstance(view, memoryview) and not view.readonly
                    addr, length = descs.addr(i), descs.length(i)
                    assert umem.view[addr:addr + length] == view
                    got.append(_udp_payload(bytes(view)))
            # The last batch still holds its frames; recycling gives them back.
            sock.recycle(descs)
            assert len(descs) == 0
    assert got == [(PORT, p) for p in payloads]
    assert max(sizes) > 1, sizes  # at least one batch held several frames


def test_recycling_keeps_the_fill_ring_full(pair, filter_prog):
    """Many more frames than the UMEM holds pass through recv_into and recv_batch: each call
    gives the previous batch back to the fill ring, so nothing runs dry or leaks.  (Two arrays
    holding frames at once would hold all 8 of the fill ring's: each round recycles the one it
    used before the next round switches to the other.)"""
    with xsk.XskUmem(16) as umem:  # 8 frames in the fill ring, 8 free
        with xsk.XskSocket("nka", 0, umem, rx_size=8, tx_size=8) as sock:
            sock.update_xskmap(filter_prog.maps["xsks"].fd)
            descs = sock.descs(4)
            got = []
            for round_ in range(8):
                batch = [f"r{round_}-{i}".encode() for i in range(6)]
                pair.send_udp_from_b(PORT, batch, gap=0.002)
                end = time.monotonic() + 5
                want = len(got) + len(batch)
                while len(got) < want and time.monotonic() < end:
                    if round_ % 2:
                        d = sock.recv_batch(4, timeout=0.2)
                    else:
                        sock.recv_into(descs, timeout=0.2)
                        d = descs
                    got += [_udp_payload(bytes(f))[1] for f in d]
                sock.recycle(d)
            assert sock.recv_batch(4).n == 0 and sock.recv_into(descs) == 0
            assert umem.free_frames == 8, "frames leaked out of the fill ring"
            stats = sock.statistics()
    assert len(got) == 48 > umem.size_frames
    assert got == [f"r{r}-{i}".encode() for r in range(8) for i in range(6)]
    assert stats["rx_fill_ring_empty_descs"] == 0 and stats["rx_dropped"] == 0, stats


def _listen_udp_in_b(pair, count: int) -> subprocess.Popen:
    listener = pair.in_b(
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('{B_IP}', {PORT}))\n"
        "s.settimeout(10)\n"
        "print('ready', flush=True)\n"
        "for _ in range(int(sys.argv[1])):\n"
        "    data, addr = s.recvfrom(2048)\n"
        "    print(data.hex(), addr[0], flush=True)\n", str(count))
    assert listener.stdout.readline().strip() == "ready"
    return listener


def test_send_batch_and_send_reach_the_peer(pair):
    """Frames written in place into allocated UMEM frames (send_batch, no copy) and a list of
    frames (send, one copy in C) all arrive; their frames come back through completion."""
    mac_b, mac_a = _mac(pair.ns_b, "nkb"), _mac(pair.ns_a, "nka")
    in_place = [f"in place {i}".encode() for i in range(10)]
    copied = [f"copied {i}".encode() for i in range(10)]
    listener = _listen_udp_in_b(pair, len(in_place) + len(copied))
    try:
        with xsk.XskUmem(64) as umem:
            with xsk.XskSocket("nka", 0, umem) as sock:
                free0 = umem.free_frames
                descs = sock.descs(16)
                assert umem.alloc(descs, len(in_place)) == len(in_place) == len(descs)
                assert umem.free_frames == free0 - len(in_place)
                for i, payload in enumerate(in_place):
                    frame = _udp_frame(mac_b, mac_a, A_IP, B_IP, 4242, PORT, payload)
                    descs[i][:len(frame)] = frame
                    descs.set_length(i, len(frame))
                assert sock.send_batch(descs) == len(in_place)
                assert len(descs) == 0  # the frames belong to the kernel now
                frames = [_udp_frame(mac_b, mac_a, A_IP, B_IP, 4242, PORT, p) for p in copied]
                assert sock.send(frames) == len(copied)
                out, err = listener.communicate(timeout=15)
                deadline = time.monotonic() + 2
                while umem.free_frames < free0 and time.monotonic() < deadline:
                    sock.complete()
                    time.sleep(0.01)
                assert umem.free_frames == free0
        assert listener.returncode == 0, err
        lines = [ln.split() for ln in out.splitlines()]
        assert [bytes.fromhex(h) for h, _ in lines] == in_place + copied
        assert {src for _, src in lines} == {A_IP}
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


# In b: capture what arrives on a device (AF_PACKET), send UDP datagrams to A_IP:PORT, then
# report the captured frames that carry those payloads.
_ECHO_PEER = """
import json, socket, sys, time
dev, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
cap.bind((dev, 0))
cap.settimeout(0.2)
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = [f"echo {i:04d}".encode() for i in range(count)]
seen = []
def drain():
    while True:
        try:
            frame, addr = cap.recvfrom(4096)
        except socket.timeout:
            return
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        ihl = (frame[14] & 15) * 4
        payload = frame[14 + ihl + 8:]
        if payload[:5] == b"echo ":
            seen.append((frame[:6].hex(), frame[6:12].hex(), payload.decode()))
for p in sent:
    out.sendto(p, (sys.argv[4], int(sys.argv[5])))
    time.sleep(gap)
end = time.monotonic() + 5
while len(seen) < count and time.monotonic() < end:
    drain()
print(json.dumps(seen), flush=True)
"""


def test_echo_returns_frames_to_the_sender(pair, filter_prog):
    """XskSocket.echo sends every frame back with MACs swapped, and its counts match."""
    count = 200
    mac_b, mac_a = _mac(pair.ns_b, "nkb"), _mac(pair.ns_a, "nka")
    with xsk.XskUmem(256) as umem:
        with xsk.XskSocket("nka", 0, umem) as sock:
            sock.update_xskmap(filter_prog.maps["xsks"].fd)
            peer = pair.in_b(_ECHO_PEER, "nkb", str(count), "0.002", A_IP, str(PORT))
            stats = sock.echo(duration=20, count=count, swap_macs=True)
            out, err = peer.communicate(timeout=30)
            assert peer.returncode == 0, err
            free_after = umem.free_frames
    seen = json.loads(out)
    assert stats.rx == stats.tx == count and stats.dropped == 0, stats
    assert stats.kicks >= 1 and stats.seconds > 0
    assert [p for _, _, p in seen] == [f"echo {i:04d}" for i in range(count)]
    # Swapped: the echo is addressed to b and comes from a.
    assert {(d, s) for d, s, _ in seen} == {(mac_b.hex(), mac_a.hex())}
    # Echo is zero-copy: the loop took no frame from the free ones (half the UMEM).
    assert free_after == 128


def test_echo_stops_on_request_and_guards_the_socket(pair):
    import threading

    with xsk.XskUmem(64) as umem:
        with xsk.XskSocket("nka", 0, umem) as sock:
            result = {}
            t = threading.Thread(target=lambda: result.update(stats=sock.echo()))
            t.start()
            try:
                time.sleep(0.3)
                with pytest.raises(KernelError) as ei:
                    sock.recv(1)
                assert ei.value.errno == errno.EBUSY
            finally:
                sock.stop()
                t.join(timeout=10)
            assert not t.is_alive()
            assert result["stats"].rx == 0 and result["stats"].seconds >= 0.3
            # The socket is usable again, and a new loop honours its duration.
            assert sock.recv(1) == []
            t0 = time.monotonic()
            assert sock.echo(duration=0.2).rx == 0
            assert 0.2 <= time.monotonic() - t0 < 2


def test_forward_copies_frames_to_another_socket(pair, filter_prog):
    """forward(): frames received on nka leave through a socket on a second veth (nkc, peer
    nkd in b), copied into that socket's UMEM."""
    subprocess.run(["ip", "-n", pair.ns_a, "link", "add", "nkc", "type", "veth", "peer", "name",
                    "nkd", "netns", pair.ns_b], check=True)
    for ns, dev in ((pair.ns_a, "nkc"), (pair.ns_b, "nkd")):
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    count = 100
    mac_b, mac_a = _mac(pair.ns_b, "nkb"), _mac(pair.ns_a, "nka")
    with xsk.XskUmem(256) as u1, xsk.XskUmem(256) as u2:
        with xsk.XskSocket("nka", 0, u1) as rx, xsk.XskSocket("nkc", 0, u2) as tx:
            rx.update_xskmap(filter_prog.maps["xsks"].fd)
            # b sends on nkb and captures on nkd, where the forwarded frames come out.
            peer = pair.in_b(_ECHO_PEER, "nkd", str(count), "0.002", A_IP, str(PORT))
            stats = rx.forward(tx, duration=20, count=count)
            out, err = peer.communicate(timeout=30)
            assert peer.returncode == 0, err
            deadline = time.monotonic() + 2
            while u2.free_frames < 128 and time.monotonic() < deadline:
                tx.complete()
                time.sleep(0.01)
            assert u2.free_frames == 128  # every copy came back through completion
            assert u1.free_frames == 128  # every received frame went back to the fill ring
    seen = json.loads(out)
    assert stats.rx == stats.tx == count and stats.dropped == 0, stats
    assert [p for _, _, p in seen] == [f"echo {i:04d}" for i in range(count)]
    # Not swapped: the frames are as b sent them (to a's MAC, from b's).
    assert {(d, s) for d, s, _ in seen} == {(mac_a.hex(), mac_b.hex())}
