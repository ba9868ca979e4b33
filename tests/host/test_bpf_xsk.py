"""AF_XDP through nkframe.xsk on a veth pair in copy mode.

Our XDP filter (bpf/test_xsk.c) redirects UDP to one port into the XSKMAP and passes the rest,
so ARP keeps working and other traffic still reaches the stack.
"""

from __future__ import annotations

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
from nkframe.errors import InvalidSpec, NotSupported

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

    def send_udp_from_b(self, port: int, payloads: list[bytes]) -> None:
        code = (
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for p in sys.argv[2:]:\n"
            f"    s.sendto(bytes.fromhex(p), ('{A_IP}', int(sys.argv[1])))\n"
            "    time.sleep(0.05)\n"
        )
        proc = self.in_b(code, str(port), *(p.hex() for p in payloads))
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
