"""Queue leasing for real (Linux 7.1+), with netdevsim as the physical device.

Runs in the vm-next tier, which builds netdevsim.ko for the guest kernel and loads it
(tools/leasesource.py); every test here is ``next_kernel``-marked, so a skip there (no lease
source, no leasing) is a failure.  What is asserted is what Debian's 7.3.4 does, read from its
net/core/netdev-genl.c and drivers/net/netkit.c:

* queue-create appends a queue to the virtual device: the new id is its old real_num_rx_queues;
* only the physical side's queue-get carries the lease (netdev_nl_queue_fill_lease walks
  physical -> virtual only); the virtual queue exists but reports no lease;
* refusals: EBUSY (already leased / in use by AF_XDP), ERANGE (no such physical queue),
  EOPNOTSUPP "netkit can only lease against the peer device" (a pair's primary), EINVAL
  "netkit maximum queue limit reached", ENODEV (physical device in another netns, no netns id);
* deleting the netkit (or its netns) returns the queue; deleting the physical device deletes the
  netkit devices holding its queues; a netkit moved to another netns keeps its leases;
* AF_XDP on a leased queue: the pool is registered on the physical queue (both sides show xsk);
  copy mode binds and receives what an XDP program on the physical device redirects from that
  physical queue (the kernel checks the frame's queue against the lease); zero-copy is handed
  to the physical driver, and netdevsim has neither ndo_xdp_xmit nor ndo_xsk_wakeup: EOPNOTSUPP.

netdevsim devices are created on the netdevsim bus, which puts the netdev into the init netns;
each test moves it into a namespace of its own and deletes the device at the end.
"""

from __future__ import annotations

import errno
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

import nkframe
from nkframe import bpf, netns, probe, xsk
from nkframe.errors import InvalidSpec, KernelError, NotSupported
from nkframe.netlink import links
from nkframe.netlink.netdev import Lease, NetdevFamily, QueueType
from nkframe.netlink.netkit import NetkitSpec, create_netkit

pytestmark = [
    pytest.mark.root,
    pytest.mark.next_kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

BUS = Path("/sys/bus/netdevsim")
RX = QueueType.RX


def _require_lease_source() -> None:
    if not (BUS / "new_device").exists():
        why = os.environ.get("NKFRAME_LEASE_SOURCE_WHY") or (
            "netdevsim is not loaded; the vm-next tier builds it for the guest kernel and loads "
            "it (tools/leasesource.py)")
        pytest.skip(f"no lease source: {why}")
    feats = probe.features()
    if not feats.supported("queue_lease"):
        pytest.skip(f"no queue leasing: {feats['queue_lease'].reason}")
    if not feats.supported("netkit_single"):
        pytest.skip(f"no netkit single mode: {feats['netkit_single'].reason}")


@attrs.frozen
class Nsim:
    """A netdevsim device (one port) moved into ``netns``."""

    id: int
    netns: str
    name: str
    ifindex: int
    queues: int

    def delete(self) -> None:
        try:
            (BUS / "del_device").write_text(f"{self.id}\n")
        except OSError:
            pass  # already gone (a test deleted it)


def make_nsim(netns_name: str, queues: int = 4) -> Nsim:
    for _ in range(20):
        dev_id = random.randint(1000, 60000)
        if not (BUS / "devices" / f"netdevsim{dev_id}").exists():
            break
    (BUS / "new_device").write_text(f"{dev_id} 1 {queues}\n")
    netdir = BUS / "devices" / f"netdevsim{dev_id}" / "net"
    deadline = time.monotonic() + 10
    while not (netdir.is_dir() and os.listdir(netdir)):
        if time.monotonic() > deadline:
            raise AssertionError(f"netdevsim{dev_id} made no netdev in 10 s")
        time.sleep(0.05)
    name = os.listdir(netdir)[0]
    # It appears in the init netns (ours); move it to the test's namespace under a known name.
    new = f"nsim{dev_id}"
    ifindex = links.move_link(name, netns_name, new_name=new)
    links.set_up(new, netns_name)
    return Nsim(dev_id, netns_name, new, ifindex, queues)


@pytest.fixture
def nsim(make_netns):
    _require_lease_source()
    made = make_nsim(make_netns("phys"))
    try:
        yield made
    finally:
        made.delete()


def make_single(name: str, ns: str, rxq: int = 4) -> int:
    create_netkit(NetkitSpec.single(name, num_rx_queues=rxq), netns=ns)
    links.set_up(name, ns)
    return links.ifindex(name, ns)


def rx_ids(fam: NetdevFamily, ifindex: int) -> list[int]:
    return sorted(q.id for q in fam.queues(ifindex) if q.type == RX)


def wait_for(cond, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


def test_queue_create_returns_the_new_queue_id(nsim):
    v = make_single("nkv", nsim.netns)
    with NetdevFamily(nsim.netns) as fam:
        assert rx_ids(fam, v) == [0]  # real_num_rx_queues starts at 1 whatever num_rx_queues is
        assert fam.queue_create(v, nsim.ifindex, 1) == 1
        assert fam.queue_create(v, nsim.ifindex, 3) == 2
        assert rx_ids(fam, v) == [0, 1, 2]


def test_queue_get_shows_the_lease_from_the_physical_side(nsim):
    v = make_single("nkv", nsim.netns)
    with NetdevFamily(nsim.netns) as fam:
        q = fam.queue_create(v, nsim.ifindex, 2)
        phys = fam.queue_get(nsim.ifindex, 2, RX)
        assert phys.lease == Lease(ifindex=v, queue_id=q, queue_type=RX, netns_id=None)
        assert fam.queue_get(nsim.ifindex, 1, RX).lease is None  # the others stay unleased
        # The virtual queue is there, but 7.3 reports the lease only from the physical side;
        # virtual -> physical is found by reading the physical side.
        virt = fam.queue_get(v, q, RX)
        assert (virt.ifindex, virt.id, virt.lease) == (v, q, None)
        held = [(vq, p.ifindex, p.id) for vq, p in fam.leases_held_by(v)]
        assert held == [(q, nsim.ifindex, 2)]


def test_a_second_lease_of_the_same_queue_is_ebusy(nsim):
    v = make_single("nkv", nsim.netns)
    w = make_single("nkw", nsim.netns)
    with NetdevFamily(nsim.netns) as fam:
        fam.queue_create(v, nsim.ifindex, 1)
        for target in (v, w):
            with pytest.raises(KernelError) as ei:
                fam.queue_create(target, nsim.ifindex, 1)
            assert ei.value.errno == errno.EBUSY
            msg = str(ei.value)
            assert "in use due to queue leasing" in msg and f"queue 1 of {nsim.name}" in msg, msg
        assert rx_ids(fam, v) == [0, 1] and rx_ids(fam, w) == [0]  # nothing half-made


def test_a_bad_queue_id_is_erange(nsim):
    v = make_single("nkv", nsim.netns)
    with NetdevFamily(nsim.netns) as fam:
        with pytest.raises(InvalidSpec) as ei:
            fam.queue_create(v, nsim.ifindex, nsim.queues)
        msg = str(ei.value)
        assert "ERANGE" in msg and f"{nsim.name} (ifindex {nsim.ifindex}) has no queue 4" in msg, msg
        assert "nkv" in msg
        assert rx_ids(fam, v) == [0]


def test_leasing_to_the_primary_of_a_pair_is_refused(nsim):
    create_netkit(NetkitSpec.pair("nkp", "nkq", num_rx_queues=4, peer_num_rx_queues=4),
                  netns=nsim.netns)
    primary, peer = links.ifindex("nkp", nsim.netns), links.ifindex("nkq", nsim.netns)
    with NetdevFamily(nsim.netns) as fam:
        with pytest.raises(NotSupported) as ei:
            fam.queue_create(primary, nsim.ifindex, 0)
        assert ei.value.feature == "queue_lease"
        assert "nkp" in ei.value.reason and "queue 0" in ei.value.reason
        assert "netkit can only lease against the peer device" in ei.value.reason
        assert fam.queue_get(nsim.ifindex, 0, RX).lease is None
        # The kernel lets the pair's peer hold a lease (netkit_queue_create refuses only the
        # primary); AF_XDP on it is refused though (netkit_xsk: pair mode, EOPNOTSUPP).
        assert fam.queue_create(peer, nsim.ifindex, 0) == 1


def test_a_full_virtual_device_is_refused(nsim):
    v = make_single("nkv", nsim.netns, rxq=2)
    with NetdevFamily(nsim.netns) as fam:
        assert fam.queue_create(v, nsim.ifindex, 0) == 1
        with pytest.raises(InvalidSpec, match="maximum queue limit.*no spare RX queue"):
            fam.queue_create(v, nsim.ifindex, 1)
        assert fam.queue_get(nsim.ifindex, 1, RX).lease is None


def test_a_lease_across_namespaces(nsim, make_netns):
    pod = make_netns("pod")
    v = make_single("nkv", pod)
    with netns.ipr(pod) as ipr:
        phys_id_in_pod = netns.netns_id(ipr, nsim.netns)
    with netns.ipr(nsim.netns) as ipr:
        pod_id_in_phys = netns.netns_id(ipr, pod)
    with NetdevFamily(pod) as fam:
        # Without the netns id the pod's socket looks the physical ifindex up in the pod.
        with pytest.raises(KernelError) as ei:
            fam.queue_create(v, nsim.ifindex, 1)
        assert ei.value.errno == errno.ENODEV and "lease_netns_id" in str(ei.value)
        with pytest.raises(InvalidSpec, match="no netns id"):
            fam.queue_create(v, nsim.ifindex, 1, lease_netns_id=phys_id_in_pod + 77)
        assert fam.queue_create(v, nsim.ifindex, 1, lease_netns_id=phys_id_in_pod) == 1
        assert rx_ids(fam, v) == [0, 1]
    with NetdevFamily(nsim.netns) as fam:
        assert fam.queue_get(nsim.ifindex, 1, RX).lease == Lease(v, 1, RX, pod_id_in_phys)


def test_deleting_the_netkit_returns_the_queue(nsim):
    v = make_single("nkv", nsim.netns)
    with NetdevFamily(nsim.netns) as fam:
        fam.queue_create(v, nsim.ifindex, 1)
        links.delete_link("nkv", netns=nsim.netns)
        assert fam.queue_get(nsim.ifindex, 1, RX).lease is None
        w = make_single("nkw", nsim.netns)
        assert fam.queue_create(w, nsim.ifindex, 1) == 1  # free for the next one


def test_deleting_the_pod_namespace_returns_the_queue(nsim):
    pod = f"nkt-pod-{random.randrange(1 << 24):06x}"
    netns.create(pod)
    try:
        v = make_single("nkv", pod)
        with netns.ipr(pod) as ipr:
            nsid = netns.netns_id(ipr, nsim.netns)
        with NetdevFamily(pod) as fam:
            fam.queue_create(v, nsim.ifindex, 2, lease_netns_id=nsid)
    finally:
        netns.delete(pod)
    with NetdevFamily(nsim.netns) as fam:
        # The namespace is dismantled by a kernel worker after the last reference goes.
        wait_for(lambda: fam.queue_get(nsim.ifindex, 2, RX).lease is None,
                 "the lease of a netkit in a deleted netns is returned")


def test_moving_a_single_device_into_a_pod_keeps_its_leases(nsim, make_netns):
    pod = make_netns("pod")
    v = make_single("nkv", nsim.netns)
    with NetdevFamily(nsim.netns) as fam:
        assert fam.queue_create(v, nsim.ifindex, 1) == 1
        assert fam.queue_create(v, nsim.ifindex, 2) == 2
    moved = links.move_link("nkv", pod, new_name="eth0", netns=nsim.netns)
    links.set_up("eth0", pod)  # a move takes the device down; queues are listed only while up
    with netns.ipr(nsim.netns) as ipr:
        pod_id = netns.netns_id(ipr, pod)
    with NetdevFamily(nsim.netns) as fam:
        assert fam.queue_get(nsim.ifindex, 1, RX).lease == Lease(moved, 1, RX, pod_id)
        assert fam.queue_get(nsim.ifindex, 2, RX).lease == Lease(moved, 2, RX, pod_id)
        held = [(vq, p.id) for vq, p in fam.leases_held_by(moved, pod_id)]
        assert held == [(1, 1), (2, 2)]
    with NetdevFamily(pod) as fam:
        assert rx_ids(fam, moved) == [0, 1, 2]


def test_deleting_the_physical_device_deletes_the_leasing_netkit(nsim):
    v = make_single("nkv", nsim.netns)
    make_single("nkw", nsim.netns)  # holds no lease: stays
    with NetdevFamily(nsim.netns) as fam:
        fam.queue_create(v, nsim.ifindex, 1)
    nsim.delete()
    wait_for(lambda: not links.link_exists("nkv", nsim.netns),
             "the netkit holding a lease goes with the physical device")
    assert links.link_exists("nkw", nsim.netns)


# --- AF_XDP on a leased queue (issue 13 item 5) ------------------------------------------------


@pytest.fixture
def leased(nsim):
    """(nsim, netkit name, virtual queue id) with physical queue 1 leased to a single netkit."""
    if not xsk.available():
        pytest.skip("nkframe was built without libxdp")
    v = make_single("nkv", nsim.netns)
    with NetdevFamily(nsim.netns) as fam:
        q = fam.queue_create(v, nsim.ifindex, 1)
    return nsim, "nkv", q


def test_af_xdp_zero_copy_on_a_leased_netdevsim_queue_is_not_supported(leased):
    nsim, name, q = leased
    with netns.enter(nsim.netns), xsk.XskUmem(64) as umem:
        with pytest.raises(NotSupported) as ei:
            xsk.XskSocket(name, q, umem, bind_flags=xsk.XDP_ZEROCOPY, rx_size=64, tx_size=64)
        assert umem._sockets == 0
    reason = ei.value.reason
    assert ei.value.feature == "af_xdp_zerocopy"
    assert "EOPNOTSUPP" in reason and "driver netdevsim" in reason, reason
    assert f"{nsim.name} (ifindex {nsim.ifindex}) queue 1" in reason, reason
    assert "lacks xsk-zerocopy and ndo-xmit" in reason, reason


def test_af_xdp_copy_mode_binds_on_a_leased_queue(leased):
    nsim, name, q = leased
    for flags in (xsk.XDP_COPY, 0):  # 0: the kernel tries zero-copy and falls back to copy
        with netns.enter(nsim.netns), xsk.XskUmem(64) as umem:
            with xsk.XskSocket(name, q, umem, bind_flags=flags, rx_size=64, tx_size=64):
                with NetdevFamily() as fam:
                    # The pool sits on the physical queue; both sides report it.
                    assert fam.queue_get(nsim.ifindex, 1, RX).xsk
                    assert fam.queue_get(links.ifindex(name), q, RX).xsk
        with NetdevFamily(nsim.netns) as fam:
            # The socket's pool is released by a deferred worker after close.
            wait_for(lambda: not fam.queue_get(nsim.ifindex, 1, RX).xsk,
                     "the physical queue is free again after the socket closed")


def test_leasing_a_queue_in_use_by_af_xdp_is_ebusy(nsim):
    if not xsk.available():
        pytest.skip("nkframe was built without libxdp")
    v = make_single("nkv", nsim.netns)
    with netns.enter(nsim.netns), xsk.XskUmem(64) as umem:
        with xsk.XskSocket(nsim.name, 0, umem, bind_flags=xsk.XDP_COPY, rx_size=64, tx_size=64):
            with NetdevFamily() as fam:
                with pytest.raises(KernelError) as ei:
                    fam.queue_create(v, nsim.ifindex, 0)
                assert ei.value.errno == errno.EBUSY
                assert "in use by AF_XDP" in str(ei.value)
                assert rx_ids(fam, v) == [0]


XSK_O = Path(nkframe.__file__).parent / "_objs" / "test_xsk.o"
PORT = 5555


def test_af_xdp_copy_mode_receives_from_the_leased_physical_queue(make_netns):
    """Frames reach the socket bound to the netkit's queue from the physical queue it leases.

    Two netdevsim ports are linked (what one sends, the other receives on the RX queue picked by
    the sender's TX queue); the receiving port's physical queue 2 is leased to a single netkit
    as its queue 1, and an XDP program on the physical port redirects UDP to PORT into an
    XSKMAP at the physical queue's index, where the netkit socket sits.  Which datagrams land on
    queue 2 depends on the sender's flow hash, so 64 source ports are used: some arrive, every
    one that arrives is one we sent, and the rest go to the stack.
    """
    _require_lease_source()
    if not xsk.available():
        pytest.skip("nkframe was built without libxdp")
    ns_tx, ns_rx = make_netns("tx"), make_netns("rx")
    a, b = make_nsim(ns_tx), make_nsim(ns_rx)
    try:
        fds = [os.open(netns.netns_path(n), os.O_RDONLY) for n in (ns_tx, ns_rx)]
        try:
            # netdevsim reads the netns fds in the writing process.
            with open(BUS / "link_device", "w") as f:
                f.write(f"{fds[0]}:{a.ifindex} {fds[1]}:{b.ifindex}")
        finally:
            for fd in fds:
                os.close(fd)
        links.add_address(a.name, "198.51.100.1/24", netns=ns_tx)
        links.add_address(b.name, "198.51.100.2/24", netns=ns_rx)
        v = make_single("nkv", ns_rx)
        with NetdevFamily(ns_rx) as fam:
            q = fam.queue_create(v, b.ifindex, 2)
        with netns.enter(ns_rx), bpf.BpfObject.open(XSK_O) as obj:
            obj.set_global("cfg_port", struct.pack("<H", PORT))
            obj.load()
            bpf.xdp_attach(b.ifindex, obj.programs["xsk_udp"].fd, bpf.XDP_FLAGS_DRV_MODE)
            try:
                with xsk.XskUmem(256) as umem, \
                        xsk.XskSocket("nkv", q, umem, bind_flags=xsk.XDP_COPY) as sock:
                    obj.maps["xsks"].update(struct.pack("<I", 2), struct.pack("<I", sock.fd))
                    sent = [f"lease {i}".encode() for i in range(64)]
                    code = ("import socket, sys\n"
                            "for i, p in enumerate(sys.argv[1:]):\n"
                            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                            "    s.bind(('198.51.100.1', 41000 + i))\n"
                            f"    s.sendto(bytes.fromhex(p), ('198.51.100.2', {PORT}))\n"
                            "    s.close()\n")
                    subprocess.run(["nsenter", f"--net={netns.netns_path(ns_tx)}", sys.executable,
                                    "-c", code, *(p.hex() for p in sent)], check=True, timeout=60)
                    got: list[bytes] = []
                    end = time.monotonic() + 3
                    while time.monotonic() < end:
                        got += sock.recv(64, timeout=0.2)
                hits = struct.unpack("<Q", obj.maps["xsk_hits"].lookup(bytes(4)))[0]
            finally:
                bpf.xdp_detach(b.ifindex, bpf.XDP_FLAGS_DRV_MODE)
        payloads = [f[42:] for f in got]  # Ethernet 14 + IPv4 20 + UDP 8
        assert hits == len(sent)  # the program saw every datagram (on whichever queue)
        assert 0 < len(payloads) < len(sent), len(payloads)
        assert len(set(payloads)) == len(payloads) and set(payloads) <= set(sent)
    finally:
        a.delete()
        b.delete()
