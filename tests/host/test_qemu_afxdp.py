"""The af-xdp QEMU that tools/qemu_afxdp.py builds, against an XSKMAP nkframe pins.

In a private netns with a veth pair: our XDP filter (bpf/test_xsk.c) on one end, its XSKMAP
pinned on the test's private bpffs, and QEMU (no guest disk, stopped with -S) started there with
``-netdev af-xdp,...,inhibit=on,map-path=<pin>``.  The kernel's XSKMAP refuses lookups from user
space (EOPNOTSUPP), so the proof that QEMU put its socket into slot 0 is the filter itself:
under BPF_PROG_TEST_RUN a frame for the XSK port comes back XDP_PASS while the slot is empty
(bpf_redirect_map's fallback) and XDP_REDIRECT once a socket sits there.  Killing QEMU empties
the slot again (the kernel drops a closed socket from its maps) and leaves our program, map and
pin as they were.

The binary is not optional here: the session fixture builds it through the tool (cached under
~/.cache/nkframe/qemu, a cold build takes ~10 min on 2 cores) or fails with the tool's reason.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

import nkframe
from nkframe import bpf, netns
from nkframe.errors import KernelError
from nkframe.netlink import links
from nkframe.qemu import AfXdpNetdev, check_af_xdp, inspect

pytestmark = pytest.mark.root

XSK_O = Path(nkframe.__file__).parent / "_objs" / "test_xsk.o"
PORT = 5555
XDP_PASS, XDP_REDIRECT = 2, 4
MAC = "52:54:00:6b:66:01"


def _frame() -> bytes:
    """Ethernet/IPv4/UDP to PORT: the frame test_xsk.c redirects to the XSK of its queue."""
    udp = struct.pack("!HHHH", 40000, PORT, 8 + 4, 0) + b"ping"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton("198.51.100.2"), socket.inet_aton("198.51.100.1"))
    return bytes.fromhex("020000000001" "020000000002" "0800") + ip + udp


class Stage:
    """The netns, veth pair, filter program on ``qx0`` and its XSKMAP pinned at ``map_path``."""

    def __init__(self, netns: str, obj: bpf.BpfObject, map_path: str, ifindex: int) -> None:
        self.netns, self.obj, self.map_path, self.ifindex = netns, obj, map_path, ifindex
        self.prog = obj.programs["xsk_udp"]

    def verdict(self) -> int:
        """What the filter does with a frame for the XSK on queue 0 (the map's slot 0)."""
        return self.prog.test_run(_frame()).retval

    def start_qemu(self, binary: str, netdev: str, qmp: str, *extra: str) -> subprocess.Popen:
        argv = ["nsenter", f"--net=/run/netns/{self.netns}", binary,
                "-S", "-nodefaults", "-machine", "q35", "-display", "none",
                "-monitor", "none", "-serial", "none", "-m", "64",
                "-qmp", f"unix:{qmp},server=on,wait=off", "-netdev", netdev, *extra]
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture
def stage(make_netns, bpffs_root):
    ns = make_netns("qx")
    links.create_veth(links.VethSpec(name="qx0", peer_name="qx1"), netns=ns)
    for dev in ("qx0", "qx1", "lo"):
        links.set_up(dev, netns=ns)
    with netns.enter(ns):
        ifindex = socket.if_nametoindex("qx0")
    with bpf.BpfObject.open(XSK_O) as obj:
        obj.set_global("cfg_port", struct.pack("<H", PORT))
        obj.load()
        map_path = os.path.join(bpffs_root, "xsks")
        obj.maps["xsks"].pin(map_path)
        with netns.enter(ns):
            bpf.xdp_attach(ifindex, obj.programs["xsk_udp"].fd, bpf.XDP_FLAGS_SKB_MODE)
        try:
            yield Stage(ns, obj, map_path, ifindex)
        finally:
            with netns.enter(ns):
                bpf.xdp_detach(ifindex, bpf.XDP_FLAGS_SKB_MODE)


def _qmp(path: str, *commands: str, timeout: float = 30) -> list[dict]:
    """Connect to QEMU's QMP socket (waiting for it), negotiate, run ``commands``."""
    end = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            break
        except OSError:
            s.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.2)
    s.settimeout(timeout)
    f = s.makefile("rw")
    try:
        json.loads(f.readline())  # greeting
        out = []
        for cmd in ("qmp_capabilities", *commands):
            f.write(json.dumps({"execute": cmd}) + "\n")
            f.flush()
            while True:
                msg = json.loads(f.readline())
                if "return" in msg or "error" in msg:
                    break
            out.append(msg)
        return out[1:]
    finally:
        f.close()
        s.close()


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    return proc.returncode, err


def test_built_qemu_has_af_xdp(qemu_afxdp):
    q = inspect(qemu_afxdp)
    assert q.af_xdp, q
    assert q.version >= (10, 1, 0)
    assert "LD_LIBRARY_PATH" not in os.environ  # it runs on its rpath alone
    ldd = subprocess.run(["ldd", qemu_afxdp], capture_output=True, text=True, check=True).stdout
    lines = {line.split()[0]: line for line in ldd.splitlines() if "=>" in line}
    prefix = str(Path(qemu_afxdp).parent.parent / "xdp" / "lib")
    for lib_name in ("libxdp.so.1", "libbpf.so.1"):
        assert prefix in lines[lib_name], f"{lib_name} not from the private prefix: {lines[lib_name]}"


def test_xskmap_lookup_from_user_space_is_refused(stage):
    """Why the proof below goes through the filter: the kernel does not let user space read an
    XSKMAP."""
    with pytest.raises(KernelError) as ei:
        stage.obj.maps["xsks"].lookup(struct.pack("<I", 0))
    assert ei.value.errno == errno.EOPNOTSUPP


def test_qemu_fills_the_pinned_xskmap(qemu_afxdp, stage, tmp_path):
    netdev = AfXdpNetdev("qx0", id="n0", mode="skb", force_copy=True, queues=1, start_queue=0,
                         inhibit=True, map_path=stage.map_path)
    check_af_xdp(inspect(qemu_afxdp), netdev)
    assert stage.verdict() == XDP_PASS, "slot 0 filled before QEMU ran"
    prog_id = stage.prog.info().id
    qmp = str(tmp_path / "qmp.sock")
    proc = stage.start_qemu(qemu_afxdp, netdev.netdev(), qmp, "-device", netdev.device(MAC))
    try:
        status = _qmp(qmp, "query-status")[0]
        assert status["return"]["status"] == "prelaunch", status
        end = time.monotonic() + 10
        while stage.verdict() != XDP_REDIRECT and time.monotonic() < end:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        assert stage.verdict() == XDP_REDIRECT, "QEMU did not put its XSK into slot 0"
        # inhibit=on: QEMU loaded no XDP program of its own, ours is still the one attached
        with netns.enter(stage.netns):
            assert bpf.xdp_query(stage.ifindex, bpf.XDP_FLAGS_SKB_MODE) == prog_id
    finally:
        rc, err = _stop(proc)
    assert rc == 0, f"QEMU exit {rc}: {err}"
    assert "terminating on signal 15" in err, err
    # nothing left behind: the slot is empty again, our program and pin are untouched
    assert stage.verdict() == XDP_PASS, "slot 0 still filled after QEMU exited"
    with netns.enter(stage.netns):
        assert bpf.xdp_query(stage.ifindex, bpf.XDP_FLAGS_SKB_MODE) == prog_id
    assert bpf.pin_type(stage.map_path) == "map"
    assert sorted(os.listdir(os.path.dirname(stage.map_path))) == ["xsks"]
    assert not os.path.exists(qmp) or not _listening(qmp)


def _listening(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_qemu_refuses_inhibit_without_map_path(qemu_afxdp, stage, tmp_path):
    """QEMU's own check (the rule nkframe.qemu encodes): inhibit=on needs map-path or sock-fds."""
    proc = stage.start_qemu(qemu_afxdp, "af-xdp,id=n0,ifname=qx0,queues=1,inhibit=on",
                            str(tmp_path / "qmp.sock"))
    try:
        proc.wait(timeout=30)
    finally:
        rc, err = _stop(proc)
    assert rc == 1, err
    assert "'inhibit=on' requires 'sock-fds' or 'map-path'" in err, err
    assert stage.verdict() == XDP_PASS
