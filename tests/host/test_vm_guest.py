"""The test guest of tools/vm_guest.py boots and answers on a plain tap, no AF_XDP involved.

In a fresh netns: a tap device (198.51.100.1/24, 2001:db8:64::1/64) and the system's QEMU
started in that netns (nsenter --net) with the tap as a virtio-net NIC.  The guest (Debian's
6.12 kernel, busybox initramfs) is 198.51.100.2/24 with the tap as its on-link gateway, the
tap's MAC as the gateway's permanent neighbour entry, UDP echo on two ports, TCP echo on one,
and pings the gateway before it says READY.  From the netns: ping (v4 and v6), UDP echo
(repeatedly, both ports, both families), no answer from a port it does not serve, TCP echo
(two connections).  A packet socket on the tap meanwhile proves the guest never ARPs for its
gateway.  The boot time (QEMU start to READY) is printed.

A second boot without any NIC shows the failure path: ``NKGUEST ERROR``, and init stays alive.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nkframe import netns

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.environ.get("NKFRAME_VM") == "1",
                                 reason="boots a VM: runs on the host, not nested in a VM tier")]

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import vm_guest  # noqa: E402

QEMU = "/usr/bin/qemu-system-x86_64"
TAP = "nkt0"
GUEST_MAC = "52:54:00:12:34:56"
HOST_IP, GUEST_IP = "198.51.100.1", "198.51.100.2"
HOST_IP6, GUEST_IP6 = "2001:db8:64::1", "2001:db8:64::2"
UDP_PORTS = (7000, 7001)
UDP_CLOSED = 7002
TCP_PORT = 7100
BOOT_TIMEOUT = 180.0
ETH_P_ARP = 0x0806


@pytest.fixture(scope="module")
def guest():
    if not os.access(QEMU, os.X_OK):
        pytest.fail(f"{QEMU} is missing (Debian package qemu-system-x86)", pytrace=False)
    kernel = vm_guest.guest_kernel(vm_guest.DEFAULT_SERIES)
    return kernel, vm_guest.build_initramfs(kernel)


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def in_ns(ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *cmd], capture_output=True,
                          text=True, timeout=timeout)


def start_qemu(argv: list[str], out: Path) -> subprocess.Popen:
    with open(out, "wb") as f:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT)


def stop_qemu(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def udp_echo(family: int, addr: str, port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (addr, port))
        data, peer = s.recvfrom(65536)
        assert peer[1] == port
        return data


def tcp_echo(family: int, addr: str, port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect((addr, port))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got


def arp_frames(sock: socket.socket) -> list[tuple[int, str, str]]:
    """(opcode, sender MAC, target IP) of every ARP frame the packet socket holds."""
    out = []
    while True:
        try:
            frame = sock.recv(2048)
        except BlockingIOError:
            return out
        if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
            continue
        op = struct.unpack("!H", frame[20:22])[0]
        sender = ":".join(f"{b:02x}" for b in frame[22:28])
        out.append((op, sender, socket.inet_ntoa(frame[38:42])))


def test_kernel_cmdline():
    line = vm_guest.kernel_cmdline(mac="52:54:00:AB:CD:EF", ip="10.0.0.2/24", gw="10.0.0.1",
                                   gwmac="02:00:00:00:00:01", udpecho=(7, 9), tcpecho=(8,),
                                   ping="10.0.0.1")
    assert line.split() == ["console=ttyS0", "panic=-1", "quiet", "nk.mac=52:54:00:ab:cd:ef",
                            "nk.ip=10.0.0.2/24", "nk.gw=10.0.0.1", "nk.gwmac=02:00:00:00:00:01",
                            "nk.udpecho=7,9", "nk.tcpecho=8", "nk.ping=10.0.0.1"]
    for bad in ({"ip": "10.0.0.2"}, {"ip": "2001:db8::2/64"}, {"ip6": "10.0.0.2/24"},
                {"mac": "52:54:00:12:34"}, {"udpecho": (0,)}, {"tcpecho": (70000,)},
                {"gwmac": "02:00:00:00:00:01"}, {"gw": "2001:db8::1"}):
        with pytest.raises(ValueError):
            vm_guest.kernel_cmdline(**bad)


def test_modules_in_dependency_order(guest):
    kernel, initrd = guest
    order = [vm_guest.module_name(p) for p in vm_guest.module_load_order(kernel.modules_dir)]
    assert order[-1] == "virtio_net"
    assert order.index("failover") < order.index("net_failover") < order.index("virtio_net")
    # Built in, so not loaded: virtio_pci is what the kernel finds the NIC with.
    assert "virtio_pci" not in order
    # Cached: the same inputs give the same file, untouched.
    mtime = initrd.stat().st_mtime_ns
    assert vm_guest.build_initramfs(kernel) == initrd and initrd.stat().st_mtime_ns == mtime


def test_guest_on_a_tap(guest, make_netns, tmp_path):
    kernel, initrd = guest
    ns = make_netns("vmg")
    ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", ns, "tuntap", "add", "dev", TAP, "mode", "tap")
    ip("-n", ns, "addr", "add", f"{HOST_IP}/24", "dev", TAP)
    ip("-n", ns, "addr", "add", f"{HOST_IP6}/64", "dev", TAP, "nodad")
    ip("-n", ns, "link", "set", TAP, "up")
    tap_mac = json.loads(ip("-n", ns, "-j", "link", "show", TAP))[0]["address"]

    with netns.enter(ns):
        arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    arp.bind((TAP, ETH_P_ARP))
    arp.setblocking(False)

    log = tmp_path / "console.log"
    cmdline = vm_guest.kernel_cmdline(mac=GUEST_MAC, ip=f"{GUEST_IP}/24", ip6=f"{GUEST_IP6}/64",
                                      gw=HOST_IP, gwmac=tap_mac, udpecho=UDP_PORTS,
                                      tcpecho=(TCP_PORT,), ping=HOST_IP)
    argv = ["nsenter", f"--net=/run/netns/{ns}", *vm_guest.qemu_guest_argv(
        QEMU, kernel, initrd, cmdline, log,
        ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
         "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC}"])]
    t0 = time.monotonic()
    proc = start_qemu(argv, tmp_path / "qemu.out")
    try:
        ready = vm_guest.wait_for(log, vm_guest.READY_RE, BOOT_TIMEOUT, proc=proc)
        boot = time.monotonic() - t0
        print(f"\nvm_guest: {kernel.release} booted to READY in {boot:.1f} s (TCG): {ready}")
        m = re.search(vm_guest.READY_RE, ready)
        assert m and m.group(2) == GUEST_MAC, ready
        lines = (log.read_text(errors="replace")).splitlines()
        assert any(vm_guest.PING_OK in ln for ln in lines), vm_guest.log_tail(log)

        for addr in (GUEST_IP, GUEST_IP6):
            r = in_ns(ns, "ping", "-c", "2", "-W", "5", addr)
            assert r.returncode == 0, f"ping {addr}: {r.stdout}{r.stderr}"

        with netns.enter(ns):
            for port in UDP_PORTS:
                for i in range(3):
                    payload = f"udp {port} #{i} ".encode() * 20
                    assert udp_echo(socket.AF_INET, GUEST_IP, port, payload) == payload
            payload = b"over ipv6"
            assert udp_echo(socket.AF_INET6, GUEST_IP6, UDP_PORTS[0], payload) == payload

            # A port nobody serves: nothing comes back (the guest answers with ICMP port
            # unreachable, which a connected socket reports as ECONNREFUSED).
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(3)
                s.connect((GUEST_IP, UDP_CLOSED))
                s.send(b"anyone?")
                with pytest.raises((ConnectionRefusedError, socket.timeout)):
                    data = s.recv(65536)
                    pytest.fail(f"port {UDP_CLOSED} answered {data!r}")

            for i in range(2):
                payload = f"tcp #{i} ".encode() * 1000
                assert tcp_echo(socket.AF_INET, GUEST_IP, TCP_PORT, payload) == payload
            assert tcp_echo(socket.AF_INET6, GUEST_IP6, TCP_PORT, b"tcp over ipv6") == b"tcp over ipv6"

        frames = arp_frames(arp)
        # The capture works (the guest answered our ARP for it) and the guest never asked for
        # its gateway: the permanent neighbour entry from nk.gwmac was used.
        assert (2, GUEST_MAC, HOST_IP) in frames, frames
        asked = [f for f in frames if f[0] == 1 and f[1] == GUEST_MAC]
        assert not asked, f"the guest sent ARP requests: {asked}"
        assert proc.poll() is None, "QEMU exited"
    finally:
        stop_qemu(proc)
        arp.close()


def test_guest_reports_a_setup_failure_and_stays_alive(guest, tmp_path):
    """No NIC at all: the guest says NKGUEST ERROR instead of READY, and init keeps running."""
    kernel, initrd = guest
    log = tmp_path / "console.log"
    cmdline = vm_guest.kernel_cmdline(ip="198.51.100.2/24", udpecho=(7000,))
    proc = start_qemu(vm_guest.qemu_guest_argv(QEMU, kernel, initrd, cmdline, log),
                      tmp_path / "qemu.out")
    try:
        with pytest.raises(vm_guest.GuestError, match="NKGUEST ERROR no NIC"):
            vm_guest.wait_for(log, vm_guest.READY_RE, BOOT_TIMEOUT, proc=proc)
        time.sleep(2)
        assert proc.poll() is None, f"QEMU exited (init died?):\n{vm_guest.log_tail(log)}"
        assert "Kernel panic" not in log.read_text(errors="replace")
    finally:
        stop_qemu(proc)
