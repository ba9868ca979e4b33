"""The VM plugin's leased-queue placement (plugins/nkframe_vm/lease.py) on Linux 7.1+: a VM
endpoint on a netkit single device holding physical queues of a NIC, steered by native XDP on
that NIC.  netdevsim is the NIC (the vm-next tier builds it: tools/leasesource.py); a Python
AF_XDP socket (nkframe.xsk) stands in for QEMU, bound to the netkit device's leased queue and
put into the endpoint's pinned XSKMAP as QEMU's map-path does (xsk_socket__update_xskmap: key =
the socket's queue).

Traffic: two netdevsim ports are linked, the sender in a namespace of its own; the receiving
port's RX queue is picked by the sender's TX queue (a flow hash), so datagrams from many source
ports land on every queue: those on a leased queue reach that endpoint's socket, the others the
node's stack.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

import nkframe_vm.plugin as nkframe_vm
from nkframe import bpf, netns, xsk
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.types import EndpointSpec
from nkframe_vm import lease, steer

from test_netlink_lease import BUS, _require_lease_source, make_nsim

pytestmark = [
    pytest.mark.root,
    pytest.mark.next_kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

PORT = 5555
SENDER, NODE = "198.51.100.1", "198.51.100.2"


class Wire:
    """Node netns with netdevsim port ``nic`` (4 queues) linked to ``peer`` in ``tx``."""

    def __init__(self, make_netns):
        self.node, self.tx = make_netns("node"), make_netns("tx")
        # No IPv6 on the wire: the ports' own DAD, MLD and router solicitations would land on
        # leased queues too and reach the VM sockets beside the test's datagrams (seen in CI:
        # a multicast frame, which keeps its MAC, among the frames and the socket's counter).
        for ns in (self.node, self.tx):
            links.sysctls({"net.ipv6.conf.default.disable_ipv6": 1}, netns=ns)
        self.peer = make_nsim(self.tx)
        self.nic = make_nsim(self.node)
        fds = [os.open(netns.netns_path(n), os.O_RDONLY) for n in (self.tx, self.node)]
        try:
            with open(BUS / "link_device", "w") as f:
                f.write(f"{fds[0]}:{self.peer.ifindex} {fds[1]}:{self.nic.ifindex}")
        finally:
            for fd in fds:
                os.close(fd)
        links.add_address(self.peer.name, f"{SENDER}/24", netns=self.tx)
        links.add_address(self.nic.name, f"{NODE}/24", netns=self.node)
        # A static neighbour: an ARP request on a leased queue would go to a VM.
        mac = links.get_link(self.nic.name, netns=self.node).address
        subprocess.run(["ip", "-n", self.tx, "neigh", "replace", NODE, "lladdr", mac, "dev",
                        self.peer.name, "nud", "permanent"], check=True)

    def close(self):
        self.peer.delete()
        self.nic.delete()

    def send(self, payloads: list[bytes]) -> None:
        code = ("import socket, sys\n"
                "for i, p in enumerate(sys.argv[1:]):\n"
                "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                f"    s.bind(('{SENDER}', 41000 + i))\n"
                f"    s.sendto(bytes.fromhex(p), ('{NODE}', {PORT}))\n"
                "    s.close()\n")
        subprocess.run(["nsenter", f"--net={netns.netns_path(self.tx)}", sys.executable, "-c",
                        code, *(p.hex() for p in payloads)], check=True, timeout=60)


@pytest.fixture
def wire(make_netns):
    _require_lease_source()
    if not xsk.available():
        pytest.fail("nkframe was built without libxdp (make setup installs libxdp-dev)")
    w = Wire(make_netns)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def eng(wire, bpffs_root):
    e = Engine(wire.node, bpffs_root, plugin_objects=[nkframe_vm], autoload=False)
    try:
        yield e
    finally:
        for eid in e.layout.endpoint_ids():
            e.remove_endpoint(eid)


def _spec(pod, nic, queues, id="vm-l", ifname="eth0"):
    return EndpointSpec(id=id, netns=pod, ifname=ifname, device="netkit-single",
                        leases=[f"{nic}:{q}" for q in queues],
                        options={"vm": {"queues": len(queues)}})


def _xdp_prog(ns: str, ifindex: int) -> int:
    with netns.enter(ns):
        return bpf.xdp_query(ifindex, bpf.XDP_FLAGS_DRV_MODE)


class Vm:
    """What QEMU does with map-path: a copy-mode socket per queue, bound in the pod to the
    netkit device's queues start-queue.., each put into the pinned XSKMAP."""

    def __init__(self, pod: str, ifname: str, st: steer.VmSteering):
        self.umem, self.socks = [], []
        with netns.enter(pod):
            for q in range(st.start_queue, st.start_queue + st.queues):
                umem = xsk.XskUmem(256)
                self.umem.append(umem)
                self.socks.append(xsk.XskSocket(ifname, q, umem, bind_flags=xsk.XDP_COPY))
        with bpf.Map.from_pin(st.xskmap) as m:
            for s in self.socks:
                s.update_xskmap(m.fd)

    def recv(self, seconds: float = 3.0) -> list[bytes]:
        got: list[bytes] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for s in self.socks:
                got += s.recv(64, timeout=0.05)
        return got

    def close(self):
        for s in self.socks:
            s.close()
        for u in self.umem:
            u.close()


def _stack_socket(ns: str) -> socket.socket:
    with netns.enter(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((NODE, PORT))
    s.setblocking(False)
    return s


def _drain(s: socket.socket) -> list[bytes]:
    out = []
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        try:
            out.append(s.recv(2048))
        except BlockingIOError:
            time.sleep(0.05)
    return out


def _payloads(frames: list[bytes]) -> list[bytes]:
    return [f[42:] for f in frames if f[12:14] == b"\x08\x00" and f[23] == 17]


def _vm_netdev(ns, root, *args):
    env = dict(os.environ, NKFRAME_PLUGINS="vm", NKFRAME_NO_AGENT="1")
    return subprocess.run([sys.executable, "-m", "nkframe.cli", "--netns", ns,
                           "--bpffs-root", root, "vm-netdev", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_leased_queue_frames_reach_the_vm_socket_and_others_the_node(wire, eng, make_netns,
                                                                      bpffs_root):
    pod = make_netns("pod")
    ep = eng.add_endpoint(_spec(pod, wire.nic.name, [2]))
    assert ep.device_kind.value == "netkit-single"
    assert [(x.queue, x.uplink_queue) for x in ep.leases] == [(1, 2)]
    # The endpoint pins only its XSKMAP; the NIC's program is pinned once for the NIC.
    assert sorted(p.name for p in steer.pin_dir(bpffs_root, "vm-l").iterdir()) == ["vm_xsks"]
    nd = lease.nic_dir(bpffs_root, wire.nic.name)
    assert sorted(p.name for p in nd.iterdir()) == ["link", "vm_lease_slots", "vm_lease_stats",
                                                     "vm_lease_xsks"]
    st = steer.read_steering(bpffs_root, ep.spec)
    assert st.attached and st.placement == "leased-queue-copy", st
    assert (st.start_queue, st.queues, st.ifindex) == (1, 1, wire.nic.ifindex)
    assert _xdp_prog(wire.node, wire.nic.ifindex) == st.prog_id
    # A restarted agent (a new Engine on the same bpffs) reads the same steering.
    again = Engine(wire.node, bpffs_root, plugin_objects=[nkframe_vm], autoload=False)
    assert steer.read_steering(bpffs_root, again.get_endpoint("vm-l").spec) == st

    vm = Vm(pod, "eth0", st)
    stack = _stack_socket(wire.node)
    try:
        sent = [f"lease {i}".encode() for i in range(64)]
        wire.send(sent)
        frames = vm.recv()
        to_node = _drain(stack)
    finally:
        vm.close()
        stack.close()
    to_vm = _payloads(frames)
    assert 0 < len(to_vm) < len(sent), (len(to_vm), len(to_node))
    assert len(set(to_vm)) == len(to_vm) and set(to_vm) <= set(sent)
    # every datagram went one way or the other, none both ways
    assert sorted(to_vm + to_node) == sorted(sent), (len(to_vm), len(to_node))
    mac = bytes.fromhex(steer.vm_mac(ep.spec).replace(":", ""))
    assert all(f[:6] == mac for f in frames)
    c = steer.vm_counters(bpffs_root, "vm-l", ep.spec)
    assert c["to_socket"] == len(to_vm), c
    from nkframe import status
    got = status.gather(eng).endpoints[0]
    assert got.counters[nkframe_vm.__name__]["to_socket"] == len(to_vm), got.counters
    facts = got.details[nkframe_vm.__name__]
    assert (facts["placement"], facts["start_queue"], facts["xskmap"]) == \
        ("leased-queue-copy", "1", st.xskmap), facts
    assert facts["steering"] == f"prog {st.prog_id} on ifindex {wire.nic.ifindex}", facts
    assert got.problems == (), got.problems

    # vm-netdev: QEMU's arguments for the leased queue
    r = _vm_netdev(wire.node, bpffs_root, "vm-l", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["placement"] == "leased-queue-copy"
    assert doc["argv"] == [
        "-netdev", f"af-xdp,id=nk0,ifname=eth0,mode=native,force-copy=on,queues=1,"
                   f"start-queue=1,inhibit=on,map-path={st.xskmap}",
        "-device", f"virtio-net-pci,netdev=nk0,mac={steer.vm_mac(ep.spec)}"]
    plain = _vm_netdev(wire.node, bpffs_root, "vm-l")
    assert plain.returncode == 0 and plain.stdout.split() == doc["argv"], plain.stderr
    assert "placement leased-queue-copy" in plain.stderr

    eng.remove_endpoint("vm-l")
    assert not nd.exists() and not (eng.layout.root / "plugins").exists()
    assert _xdp_prog(wire.node, wire.nic.ifindex) == 0
    assert not steer.pin_dir(bpffs_root, "vm-l").exists()
    assert sorted(os.listdir(bpffs_root)) in ([], ["endpoints"]), os.listdir(bpffs_root)


def test_two_endpoints_share_the_nics_program(wire, eng, make_netns, bpffs_root):
    pa, pb = make_netns("pa"), make_netns("pb")
    a = eng.add_endpoint(_spec(pa, wire.nic.name, [1, 3], id="vm-a"))
    sa = steer.read_steering(bpffs_root, a.spec)
    b = eng.add_endpoint(_spec(pb, wire.nic.name, [2], id="vm-b"))
    sb = steer.read_steering(bpffs_root, b.spec)
    assert sa.attached and sb.attached, (sa, sb)
    assert sa.prog_id == sb.prog_id == _xdp_prog(wire.node, wire.nic.ifindex)
    assert (sa.start_queue, sa.queues, sb.start_queue, sb.queues) == (1, 2, 1, 1)
    r = _vm_netdev(wire.node, bpffs_root, "vm-a", "--json")
    assert r.returncode == 0, r.stderr
    assert "queues=2,start-queue=1," in json.loads(r.stdout)["argv"][1]

    va, vb = Vm(pa, "eth0", sa), Vm(pb, "eth0", sb)
    stack = _stack_socket(wire.node)
    try:
        sent = [f"shared {i}".encode() for i in range(96)]
        wire.send(sent)
        got_a, got_b = _payloads(va.recv(2.0)), _payloads(vb.recv(1.0))
        to_node = _drain(stack)
    finally:
        va.close()
        vb.close()
        stack.close()
    assert got_a and got_b and to_node, (len(got_a), len(got_b), len(to_node))
    assert sorted(got_a + got_b + to_node) == sorted(sent)
    ca = steer.vm_counters(bpffs_root, "vm-a", a.spec)
    cb = steer.vm_counters(bpffs_root, "vm-b", b.spec)
    assert (ca["to_socket"], cb["to_socket"]) == (len(got_a), len(got_b)), (ca, cb)

    # The first endpoint out leaves the program to the other; the last takes it away.
    eng.remove_endpoint("vm-a")
    sb2 = steer.read_steering(bpffs_root, b.spec)
    assert sb2.attached and sb2.prog_id == sb.prog_id, sb2
    eng.remove_endpoint("vm-b")
    assert not lease.nic_dir(bpffs_root, wire.nic.name).exists()
    assert _xdp_prog(wire.node, wire.nic.ifindex) == 0


def test_a_lost_nic_program_is_a_problem_for_status_and_reconcile(wire, eng, make_netns,
                                                                   bpffs_root):
    from nkframe import status

    ep = eng.add_endpoint(_spec(make_netns("pod"), wire.nic.name, [2]))
    assert steer.read_steering(bpffs_root, ep.spec).attached
    os.unlink(lease.nic_dir(bpffs_root, wire.nic.name) / "link")  # the last pin: detached
    assert _xdp_prog(wire.node, wire.nic.ifindex) == 0
    got = status.gather(eng).endpoints[0]
    assert got.details[nkframe_vm.__name__]["steering"] == "not attached"
    assert any("VM steering not whole" in p and wire.nic.name in p for p in got.problems), got.problems
    assert any(p.startswith("vm-l: plugin ") for p in eng.reconcile().problems)
    eng.remove_endpoint("vm-l")
    assert not lease.nic_dir(bpffs_root, wire.nic.name).exists()


def test_copy_mode_sends_on_a_leased_queue_do_not_leave(wire, eng, make_netns, bpffs_root):
    """What the kernel does with a VM's transmit on the leased placement (docs/vm.md says it):
    a copy-mode socket bound to a leased netkit queue takes frames into its TX ring and the
    kick is accepted, but none is completed, none is counted as sent by the netkit single
    device and none reaches the wire. If this fails, the kernel has started sending them:
    update docs/vm.md and steer.placement()."""
    pod = make_netns("pod")
    # No IPv6 on the pod's device: its own DAD/RS would move its counters.
    links.sysctls({"net.ipv6.conf.default.disable_ipv6": 1}, netns=pod)
    ep = eng.add_endpoint(_spec(pod, wire.nic.name, [2]))
    st = steer.read_steering(bpffs_root, ep.spec)
    peer_mac = links.get_link(wire.peer.name, netns=wire.tx).address
    payload = b"leased transmit"
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0, 64, 17, 0,
                     socket.inet_aton("198.51.100.9"), socket.inet_aton(SENDER))
    frame = (bytes.fromhex(peer_mac.replace(":", "")) + bytes.fromhex(steer.vm_mac(ep.spec).replace(":", ""))
             + b"\x08\x00" + ip + struct.pack("!HHHH", 4000, PORT, 8 + len(payload), 0) + payload)
    with netns.enter(wire.tx):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    cap.bind((wire.peer.name, 0))
    cap.settimeout(0.1)
    before = links.get_raw_link("eth0", pod).stats64()
    vm = Vm(pod, "eth0", st)
    try:
        assert vm.socks[0].send([frame] * 5) == 5
        completed, seen = 0, 0
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            vm.socks[0].kick()
            completed += vm.socks[0].complete()
            try:
                seen += payload in cap.recv(2048)
            except socket.timeout:
                pass
    finally:
        vm.close()
        cap.close()
    after = links.get_raw_link("eth0", pod).stats64()
    assert (seen, completed) == (0, 0), (seen, completed)
    assert after["tx_packets"] == before["tx_packets"], (before, after)


def test_a_failed_add_leaves_the_nic_as_it_was(wire, eng, make_netns, bpffs_root):
    """A lease the kernel refuses (queue 9 of a 4-queue NIC) undoes everything, and does not
    disturb another endpoint's steering on the same NIC."""
    from nkframe.errors import NkframeError

    a = eng.add_endpoint(_spec(make_netns("pa"), wire.nic.name, [1], id="vm-a"))
    before = steer.read_steering(bpffs_root, a.spec)
    with pytest.raises(NkframeError):
        eng.add_endpoint(_spec(make_netns("pb"), wire.nic.name, [9], id="vm-b"))
    assert eng.layout.endpoint_ids() == ["vm-a"]
    assert steer.read_steering(bpffs_root, a.spec) == before
    eng.remove_endpoint("vm-a")
    assert _xdp_prog(wire.node, wire.nic.ifindex) == 0
