"""``nkframe vm-run``: QEMU started on a VM endpoint with AF_XDP sockets nkframe made
(``sock-fds``), the path for QEMU 8.2 to 10.0, which have af-xdp but no ``map-path``.

* a real guest: the af-xdp QEMU (10.2, which takes sock-fds too) boots the test guest
  (tools/vm_guest.py) through vm-run; ping and UDP echo go through the uplink, the node and the
  sockets nkframe handed over; the process vm-run started *is* QEMU, in the pod's namespace;
  a second vm-run on the same endpoint is refused and the first VM keeps its traffic; after
  QEMU ends, the slot is free again;
* a stand-in for a 9.2 QEMU (a script that answers -version and -netdev help like one, and
  otherwise reports what it was given): what ``vm-netdev`` says about such a QEMU, and what
  vm-run hands it (fds that are unbound AF_XDP sockets in its own network namespace, exec'd in
  place of nkframe);
* the refusals: unknown endpoint, pod endpoint, QEMU without af-xdp, arguments that already
  use the netdev id; one line each, nothing left behind.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from nkframe import netns
from nkframe.netlink import links
from nkframe_vm import steer

from node_agent import GUEST_MARKS, NodeAgent, check_guest_traffic, nk, nk_env, vm_guest  # tests/host, beside this file

pytestmark = GUEST_MARKS

VM4 = "10.230.0.10"
ECHO = 7
BOOT_TIMEOUT = 240
SYSTEM_QEMU = "/usr/bin/qemu-system-x86_64"  # Debian 12's: 7.2, no af-xdp

#: A QEMU 9.2 with af-xdp, as far as nkframe can tell: answers -version and -netdev help, and
#: otherwise writes what it got to $FAKE_QEMU_REPORT (then sleeps if $FAKE_QEMU_SLEEP is set).
FAKE_QEMU = textwrap.dedent('''\
    import json, os, socket, sys, time
    args = sys.argv[1:]
    if args == ["-version"]:
        print("QEMU emulator version 9.2.0 (fake)")
        sys.exit(0)
    if args == ["-netdev", "help"]:
        print("Available netdev backend types:")
        print("af-xdp")
        print("user")
        sys.exit(0)
    nd = args[args.index("-netdev") + 1]
    fds = [int(x) for x in dict(p.partition("=")[::2] for p in nd.split(",")[1:])["sock-fds"].split(":")]
    socks = []
    for fd in fds:
        s = socket.socket(44, socket.SOCK_RAW, 0, fileno=os.dup(fd))
        socks.append({"fd": fd, "family": s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN),
                      "link": os.readlink(f"/proc/self/fd/{fd}")})
        s.detach()
    json.dump({"pid": os.getpid(), "argv": args, "socks": socks,
               "netns": os.stat("/proc/self/ns/net").st_ino}, open(os.environ["FAKE_QEMU_REPORT"], "w"))
    if os.environ.get("FAKE_QEMU_SLEEP"):
        time.sleep(float(os.environ["FAKE_QEMU_SLEEP"]))
''')


def _env(node, root: str, sock: str | None = None) -> dict:
    if sock is None:
        return dict(os.environ, NKFRAME_PLUGINS="l3,policy,vm", NKFRAME_NO_AGENT="1",
                    NKFRAME_NODE_NETNS=node.netns, NKFRAME_BPFFS_ROOT=root)
    return nk_env(node, root, sock)


def _cli(node, root, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nkframe.cli", *args], capture_output=True,
                          text=True, env=env or _env(node, root), timeout=timeout)


def _one_line_error(r: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert text in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("nkframe: error: "), r.stderr
    assert r.stdout == ""


@pytest.fixture
def fake_qemu(tmp_path) -> Path:
    p = tmp_path / "qemu-system-x86_64"
    p.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
    p.chmod(0o755)
    return p


@pytest.fixture
def vm_endpoint(node, bpffs_root):
    """(node, pod netns): a VM endpoint vm-a and a pod endpoint pod-p, through the engine."""
    import nkframe_l3
    import nkframe_policy.plugin as nkframe_policy
    import nkframe_vm.plugin as nkframe_vm
    from nkframe.engine import Engine
    from nkframe.types import EndpointSpec

    eng = Engine(node.netns, bpffs_root, plugin_objects=[nkframe_l3, nkframe_policy, nkframe_vm],
                 autoload=False, uplink=node.uplink)
    pod = node.pod()
    try:
        eng.add_endpoint(EndpointSpec(id="vm-a", netns=pod, addresses=[f"{VM4}/32"],
                                      options={"vm": {}}))
        eng.add_endpoint(EndpointSpec(id="pod-p", netns=node.pod(),
                                      addresses=["10.230.0.20/32"]))
        eng.add_endpoint(EndpointSpec(id="vm-q", netns=node.pod(), addresses=["10.230.0.30/32"],
                                      options={"vm": {"queues": 2}}))
        yield node, pod
    finally:
        for eid in eng.layout.endpoint_ids():
            eng.remove_endpoint(eid)


def test_vm_netdev_points_an_old_qemu_to_vm_run(vm_endpoint, bpffs_root, fake_qemu):
    node, _ = vm_endpoint
    r = _cli(node, bpffs_root, "vm-netdev", "vm-a", "--json", "--qemu", str(fake_qemu))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["launch"] == "sock-fds" and doc["argv"] is None
    assert doc["vm_run"] == ["nkframe", "vm-run", "vm-a", "--qemu", str(fake_qemu), "--"]
    assert "map-path" not in doc["netdev"] and doc["qemu"]["version"] == "9.2.0"
    assert "QEMU 9.2.0" in doc["launch_reason"]
    # plain output: no arguments a QEMU would start with and receive nothing; the command
    plain = _cli(node, bpffs_root, "vm-netdev", "vm-a", "--qemu", str(fake_qemu))
    _one_line_error(plain, 3, f"nkframe vm-run vm-a --qemu {fake_qemu} --")


def test_vm_run_hands_unbound_sockets_to_the_qemu_it_becomes(vm_endpoint, bpffs_root, fake_qemu,
                                                             tmp_path):
    node, pod = vm_endpoint
    report = tmp_path / "report.json"
    env = dict(_env(node, bpffs_root), FAKE_QEMU_REPORT=str(report), FAKE_QEMU_SLEEP="60")
    p = subprocess.Popen([sys.executable, "-m", "nkframe.cli", "vm-run", "vm-a", "--qemu",
                          str(fake_qemu), "--", "-m", "128", "-display", "none"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while not report.exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < end, "the QEMU stand-in never reported"
            time.sleep(0.1)
        time.sleep(0.2)  # written in one go, but let it finish
        got = json.loads(report.read_text())
        # QEMU replaced nkframe: same process, in the pod's network namespace
        assert got["pid"] == p.pid
        assert got["netns"] == os.stat(netns.netns_path(pod)).st_ino
        mac = links.get_link("eth0", netns=pod).address
        fd = got["socks"][0]["fd"]
        assert got["argv"] == ["-m", "128", "-display", "none",
                               "-netdev", "af-xdp,id=nk0,ifname=eth0,mode=native,force-copy=on,"
                                          f"queues=1,start-queue=0,inhibit=on,sock-fds={fd}",
                               "-device", f"virtio-net-pci,netdev=nk0,mac={mac}"]
        assert got["socks"][0]["family"] == 44 and got["socks"][0]["link"].startswith("socket:")

        # the slot is taken while this QEMU runs: a second vm-run is refused, nothing made
        r = _cli(node, bpffs_root, "vm-run", "vm-a", "--qemu", str(fake_qemu), "--",
                 env=dict(env, FAKE_QEMU_REPORT=str(tmp_path / "second.json")))
        _one_line_error(r, 2, "a QEMU already runs on this endpoint")
        assert not (tmp_path / "second.json").exists()
    finally:
        p.kill()
        p.communicate()
    # QEMU gone, its socket closed: the kernel emptied the slot, a new vm-run gets it
    report.unlink()
    r = _cli(node, bpffs_root, "vm-run", "vm-a", "--qemu", str(fake_qemu), "--",
             env=dict(env, FAKE_QEMU_SLEEP=""))
    assert r.returncode == 0, r.stderr
    assert json.loads(report.read_text())["socks"][0]["family"] == 44


def test_vm_run_gives_one_socket_per_queue(vm_endpoint, bpffs_root, fake_qemu, tmp_path):
    node, _ = vm_endpoint
    report = tmp_path / "report.json"
    r = _cli(node, bpffs_root, "vm-run", "vm-q", "--qemu", str(fake_qemu), "--id", "q0", "--",
             env=dict(_env(node, bpffs_root), FAKE_QEMU_REPORT=str(report)))
    assert r.returncode == 0, r.stderr
    got = json.loads(report.read_text())
    fds = [x["fd"] for x in got["socks"]]
    assert len(set(fds)) == 2 and all(x["family"] == 44 for x in got["socks"])
    assert f"queues=2,start-queue=0,inhibit=on,sock-fds={fds[0]}:{fds[1]}" in got["argv"][1]
    assert got["argv"][0] == "-netdev" and got["argv"][1].startswith("af-xdp,id=q0,")
    assert got["argv"][3].startswith("virtio-net-pci,netdev=q0,") and "mq=on" in got["argv"][3]


def test_vm_run_refusals(vm_endpoint, bpffs_root, fake_qemu, qemu_afxdp, tmp_path):
    node, _ = vm_endpoint
    report = tmp_path / "report.json"
    env = dict(_env(node, bpffs_root), FAKE_QEMU_REPORT=str(report))

    def run(*args, code, text):
        r = _cli(node, bpffs_root, "vm-run", *args, env=env)
        _one_line_error(r, code, text)
        assert not report.exists()

    run("nope", "--qemu", str(fake_qemu), "--", code=5, text="nope")
    run("pod-p", "--qemu", str(fake_qemu), "--", code=2, text="not a VM endpoint")
    if os.path.exists(SYSTEM_QEMU):
        run("vm-a", "--qemu", SYSTEM_QEMU, "--", code=3, text="predates the af-xdp netdev")
    run("vm-a", "--qemu", str(tmp_path / "missing"), "--", code=2, text="not an executable")
    run("vm-a", "--qemu", str(fake_qemu), "--user", "no-such-user-nk", "--", code=2,
        text="no such user")
    run("vm-a", "--qemu", str(fake_qemu), "--", "-netdev", "user,id=nk0", code=2,
        text="already have a -netdev with id=nk0")
    run("vm-a", "--qemu", str(fake_qemu), "--id", "nk1", "--", "--netdev=tap,id=nk1,ifname=x",
        code=2, text="already have a -netdev with id=nk1")
    run("vm-a", "--qemu", str(fake_qemu), "--", "-device", "e1000,netdev=nk0", code=2,
        text="already have a -device on netdev nk0")
    # the real af-xdp QEMU, refused the same way before anything is made
    r = _cli(node, bpffs_root, "vm-run", "vm-a", "--qemu", qemu_afxdp, "--", "-netdev",
             "user,id=nk0", env=env)
    _one_line_error(r, 2, "already have a -netdev with id=nk0")
    # after all that, the slot is still free
    r = _cli(node, bpffs_root, "vm-run", "vm-a", "--qemu", str(fake_qemu), "--", env=env)
    assert r.returncode == 0, r.stderr
    assert report.exists()


def _for_nobody(d: Path, qemu: str, kernel, initrd: Path):
    """Copies, in ``d``, of what the guest's QEMU opens, for a QEMU running as nobody (the
    originals sit under /root): the binary, its libxdp/libbpf (the binary's RUNPATH points
    under /root; LD_LIBRARY_PATH comes first), the kernel and the initramfs; and a serial log
    nobody may write.  Returns (qemu, lib dir, kernel, initrd, serial log)."""
    import types

    uid = pwd.getpwnam("nobody").pw_uid
    qemu = Path(qemu)
    shutil.copy2(qemu, d / "qemu-system-x86_64")
    shutil.copytree(qemu.parent.parent / "xdp" / "lib", d / "lib", symlinks=True)
    shutil.copy2(kernel.vmlinuz, d / "vmlinuz")
    shutil.copy2(initrd, d / "initrd.gz")
    serial = d / "serial.log"
    serial.touch()
    os.chown(serial, uid, -1)
    for p in d.rglob("*"):
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
    return (str(d / "qemu-system-x86_64"), str(d / "lib"),
            types.SimpleNamespace(vmlinuz=d / "vmlinuz"), d / "initrd.gz", serial)


@pytest.fixture
def shared():
    """A directory anyone may read (tmp_path sits in root's private pytest directory)."""
    d = Path(tempfile.mkdtemp(prefix="nkvmrun-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_guest_pings_and_echoes_through_sock_fds(node, bpffs_root, qemu_afxdp, guest_kernel,
                                                 tmp_path, shared):
    """The guest's QEMU started by vm-run as nobody: no CAP_NET_RAW, no CAP_BPF, only
    CAP_IPC_LOCK."""
    links.add_route("10.230.0.0/16", via="192.0.2.1", netns=node.outside)
    sock = str(tmp_path / "agent.sock")
    agent = NodeAgent(node, bpffs_root, sock, tmp_path / "agent.log")
    pod = node.pod("vmpod")
    qemu = None
    serial = tmp_path / "serial.log"
    agent.start()
    try:
        nk(node, bpffs_root, sock, "endpoint", "add", "vm-g", "--pod-netns", pod,
           "--address", f"{VM4}/32", "--option", 'vm={"queues": 1}')
        doc = json.loads(nk(node, bpffs_root, sock, "vm-netdev", "vm-g", "--json").stdout)
        g = doc["guest"]
        initrd = vm_guest.build_initramfs(guest_kernel, tmp_path / "guest")
        cmdline = vm_guest.kernel_cmdline(mac=g["mac"], ip=g["addresses"][0],
                                          gw=g["gateway4"], gwmac=g["gateway_mac"],
                                          udpecho=(ECHO,))
        # QEMU runs as nobody: everything it opens must be readable (written) by nobody
        qbin, lib, kernel, initrd, serial = _for_nobody(shared, qemu_afxdp, guest_kernel, initrd)
        argv = vm_guest.qemu_guest_argv(qbin, kernel, initrd, cmdline, serial)
        t0 = time.monotonic()
        qemu = subprocess.Popen([sys.executable, "-m", "nkframe.cli", "vm-run", "vm-g",
                                 "--qemu", qbin, "--user", "nobody", "--", *argv[1:]],
                                env=dict(_env(node, bpffs_root, sock), LD_LIBRARY_PATH=lib),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        vm_guest.wait_for(serial, "NKGUEST READY", BOOT_TIMEOUT, proc=qemu)
        print(f"guest ready in {time.monotonic() - t0:.1f} s")
        # the process vm-run started is QEMU itself, in the pod's namespace, with sock-fds,
        # as nobody without a single capability
        assert os.path.realpath(f"/proc/{qemu.pid}/exe") == os.path.realpath(qbin)
        assert os.stat(f"/proc/{qemu.pid}/ns/net").st_ino == os.stat(netns.netns_path(pod)).st_ino
        cmd = Path(f"/proc/{qemu.pid}/cmdline").read_bytes().split(b"\0")
        assert any(b",inhibit=on,sock-fds=" in a for a in cmd), cmd
        status = dict(ln.split(":", 1) for ln in
                      Path(f"/proc/{qemu.pid}/status").read_text().splitlines())
        nobody = pwd.getpwnam("nobody").pw_uid
        assert status["Uid"].split() == [str(nobody)] * 4, status["Uid"]
        ipc_lock = 1 << 14  # the one capability left: QEMU's UMEM is locked memory
        assert int(status["CapEff"], 16) == ipc_lock, status["CapEff"]
        assert int(status["CapPrm"], 16) == ipc_lock, status["CapPrm"]

        check_guest_traffic(node, qemu, VM4, ECHO, t0)

        # a second vm-run on the running VM's endpoint: refused, the VM keeps its traffic
        r = _cli(node, bpffs_root, "vm-run", "vm-g", "--qemu", qemu_afxdp, "--", *argv[1:],
                 env=_env(node, bpffs_root, sock))
        _one_line_error(r, 2, "a QEMU already runs on this endpoint")
        assert vm_guest.udp_echo(node.outside, VM4, ECHO, [b"still here"], timeout=10) == \
            [b"still here"]

        # QEMU ends: its socket closes and leaves the slot; frames are dropped as no_socket
        os.killpg(qemu.pid, signal.SIGTERM)
        qemu.wait(30)
        before = steer.vm_counters(bpffs_root, "vm-g")
        node.run(node.outside, "ping", "-c", "2", "-i", "0.3", "-W", "1", VM4, check=False,
                 timeout=30)
        after = steer.vm_counters(bpffs_root, "vm-g")
        assert after["no_socket"] - before["no_socket"] >= 2, (before, after)
        assert after["to_socket"] == before["to_socket"], (before, after)
    finally:
        if qemu is not None and qemu.poll() is None:
            os.killpg(qemu.pid, signal.SIGTERM)
            try:
                qemu.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(qemu.pid, signal.SIGKILL)
                qemu.wait()
        if qemu is not None:
            err = qemu.stderr.read() if qemu.stderr else ""
            print(f"QEMU's standard error:\n{err[-3000:]}")
            assert "Segmentation" not in err and "core dumped" not in err, err
        nk(node, bpffs_root, sock, "endpoint", "del", "vm-g", check=False)
        agent.stop()
        if serial.exists():
            print(serial.read_text()[-3000:])
