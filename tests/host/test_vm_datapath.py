"""The VM plugin (plugins/nkframe_vm) against the real kernel, without a guest: the steering
program on a VM endpoint's pod side, its pins, its counters, refusals, and ``nkframe vm-netdev``.

(The guest that exchanges traffic through it is in test_vm_guest_afxdp.py.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

import nkframe_l3
import nkframe_policy.plugin as nkframe_policy
import nkframe_vm.plugin as nkframe_vm
from nkframe import bpf, netns
from nkframe.engine import Engine
from nkframe.errors import InvalidSpec
from nkframe.netlink import links
from nkframe.types import EndpointSpec
from nkframe_vm import steer

pytestmark = pytest.mark.root

VM4 = "10.230.0.10"


def _engine(node, root):
    return Engine(node.netns, root, plugin_objects=[nkframe_l3, nkframe_policy, nkframe_vm],
                  autoload=False, uplink=node.uplink)


def _spec(pod, id="vm-a", **options):
    return EndpointSpec(id=id, netns=pod, addresses=[f"{VM4}/32"],
                        options={"vm": {}, **options})


@pytest.fixture
def routed(node):
    links.add_route("10.230.0.0/16", via="192.0.2.1", netns=node.outside)
    return node


@pytest.fixture
def served(routed, bpffs_root):
    """(node, engine with the uplink set up, a pod namespace); every endpoint goes at the end."""
    eng = _engine(routed, bpffs_root)
    eng.setup_uplink()
    try:
        yield routed, eng, routed.pod()
    finally:
        for eid in eng.layout.endpoint_ids():
            eng.remove_endpoint(eid)
        eng.teardown_uplink()


def _xdp_prog(pod: str, ifname: str = "eth0") -> int:
    with netns.enter(pod):
        return bpf.xdp_query(socket.if_nametoindex(ifname), bpf.XDP_FLAGS_DRV_MODE)


def test_vm_endpoint_steers_everything_to_its_xskmap_and_leaves_nothing(served, bpffs_root):
    node, eng, pod = served
    ep = eng.add_endpoint(_spec(pod))
    d = steer.pin_dir(bpffs_root, "vm-a")
    assert sorted(p.name for p in d.iterdir()) == ["link", "vm_stats", "vm_xsks"]
    st = steer.read_steering(bpffs_root, ep.spec)
    assert st.attached and st.queues == 1, st
    # The link's program is the one the kernel runs on the pod side, in native mode, on a
    # veth whatever the kernel offers (netkit has no native XDP).
    assert _xdp_prog(pod) == st.prog_id
    assert ep.device_kind.value == "veth"
    assert "native XDP" in ep.reasons.get("device", "")
    # One queue on the pod side (a veth has one per CPU otherwise).
    assert links.get_link("eth0", netns=pod).num_rx_queues == 1
    with bpf.Map.from_pin(d / "vm_xsks") as m:
        assert m.max_entries == 1
    # No socket yet: frames for the VM are dropped and counted, the pod's own stack (which
    # holds the address) never answers for the VM.
    before = steer.vm_counters(bpffs_root, "vm-a")
    r = node.run(node.outside, "ping", "-c", "3", "-i", "0.2", "-W", "1", VM4, check=False)
    assert r.returncode != 0, r.stdout
    after = steer.vm_counters(bpffs_root, "vm-a")
    assert after["no_socket"] - before["no_socket"] >= 3, (before, after)
    assert after["to_socket"] == 0
    # status shows the plugin's counters under its name (the module's here: registered as an
    # object, not through its entry point)
    from nkframe import status
    counters = status.gather(eng).endpoints[0].counters
    assert counters[nkframe_vm.__name__]["no_socket"] >= 3, counters
    eng.remove_endpoint("vm-a")
    assert not steer.pin_dir(bpffs_root, "vm-a").exists()
    assert not links.link_exists("eth0", netns=pod)


@pytest.mark.parametrize("option, message", [
    ({"queues": 0}, "queues must be an integer 1..64"),
    ({"queues": 65}, "queues must be an integer 1..64"),
    ({"queues": "2"}, "queues must be an integer"),
    ({"queus": 2}, "unknown key(s) queus"),
    ([1], "must be a mapping"),
])
def test_bad_vm_options_are_refused_before_anything_is_built(node, bpffs_root, option, message):
    eng = _engine(node, bpffs_root)
    pod = node.pod()
    before = {l.name for l in links.list_links(netns=node.netns)}
    with pytest.raises(InvalidSpec, match=message.replace("(", r"\(").replace(")", r"\)")):
        eng.add_endpoint(EndpointSpec(id="vm-bad", netns=pod, addresses=[f"{VM4}/32"],
                                      options={"vm": option}))
    assert {l.name for l in links.list_links(netns=node.netns)} == before
    assert [l.name for l in links.list_links(netns=pod)] == ["lo"]
    assert eng.layout.endpoint_ids() == []


@pytest.mark.parametrize("device, message", [
    ("netkit-single", r"1 queue\(s\) need as many leases .*not 0"),
    ("netkit", "needs native XDP on its pod side"),
])
def test_vm_on_netkit_is_refused_with_the_reason(node, bpffs_root, device, message):
    eng = _engine(node, bpffs_root)
    with pytest.raises(InvalidSpec, match=message):
        eng.add_endpoint(EndpointSpec(id="vm-s", netns=node.pod(), device=device,
                                      options={"vm": {}}))
    assert eng.layout.endpoint_ids() == []


def test_the_leased_placement_without_leasing_is_refused_with_the_reason(node, bpffs_root):
    """Where the kernel cannot lease queues (before 7.1) a VM endpoint on a netkit single
    device is refused before anything is built, naming the feature and the other placement.
    (The placement itself: test_vm_lease.py, on 7.x.)"""
    from nkframe import probe
    from nkframe.errors import NotSupported

    feats = probe.features()
    if all(feats.supported(f) for f in ("queue_lease", "xdp_native", "af_xdp")):
        pytest.skip("this kernel leases queues: test_vm_lease.py covers the placement")
    eng = _engine(node, bpffs_root)
    before = {l.name for l in links.list_links(netns=node.netns)}
    with pytest.raises(NotSupported, match="placement leased-queue-copy.*needs .*pod-queue-copy"):
        eng.add_endpoint(EndpointSpec(id="vm-s", netns=node.pod(), device="netkit-single",
                                      leases=[f"{node.uplink}:0"], options={"vm": {}}))
    assert eng.layout.endpoint_ids() == []
    assert {l.name for l in links.list_links(netns=node.netns)} == before


def test_a_socket_in_the_slot_gets_the_vms_frames_and_sends_for_it(served, bpffs_root):
    """What QEMU does, done by nkframe.xsk: bind a copy-mode socket to the pod side's queue 0
    and put it into the pinned XSKMAP.  Frames routed to the VM's address arrive there with the
    VM's MAC as destination (and nothing reaches the pod's stack: no ping reply); a frame sent
    through the socket leaves through the node side."""
    from nkframe import xsk

    if not xsk.available():
        pytest.fail("nkframe was built without libxdp (make setup installs libxdp-dev)")
    node, eng, pod = served
    ep = eng.add_endpoint(_spec(pod))
    mac = links.get_link("eth0", netns=pod).address
    with netns.enter(pod):
        umem = xsk.XskUmem(256)
        sock = xsk.XskSocket("eth0", 0, umem, bind_flags=xsk.XDP_COPY)
    try:
        with bpf.Map.from_pin(steer.pin_dir(bpffs_root, "vm-a") / "vm_xsks") as m:
            sock.update_xskmap(m.fd)
        r = node.run(node.outside, "ping", "-c", "3", "-i", "0.2", "-W", "1", VM4, check=False)
        assert r.returncode != 0  # nobody answers: the frames went to our socket
        got = []
        for _ in range(20):
            got += sock.recv(64, timeout=0.1)
        echo = [f for f in got if f[12:14] == b"\x08\x00" and f[23] == 1 and f[34] == 8]
        assert len(echo) == 3, [f[:40].hex() for f in got]
        want = bytes.fromhex(mac.replace(":", ""))
        assert all(f[:6] == want for f in echo)
        # and back: a frame through the socket comes out of the node-side device
        with netns.enter(node.netns):
            cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
        try:
            cap.bind((ep.spec.node_ifname, 0))
            cap.settimeout(2)
            frame = b"\xff" * 6 + want + b"\x88\xb5" + b"vm says hello".ljust(50, b".")
            assert sock.send([frame]) == 1
            sock.kick()
            assert cap.recv(2048)[:len(frame)] == frame
        finally:
            cap.close()
    finally:
        sock.close()
        umem.close()
    c = steer.vm_counters(bpffs_root, "vm-a")
    assert c["to_socket"] >= 3, c


def test_two_queues_give_two_pod_queues_and_slots(node, bpffs_root):
    eng = _engine(node, bpffs_root)
    pod = node.pod()
    try:
        ep = eng.add_endpoint(_spec(pod, vm={"queues": 2}))
        assert links.get_link("eth0", netns=pod).num_rx_queues == 2
        with bpf.Map.from_pin(steer.pin_dir(bpffs_root, ep.id) / "vm_xsks") as m:
            assert m.max_entries == 2
    finally:
        eng.remove_endpoint("vm-a")


def _vm_netdev(node, root, *args):
    env = dict(os.environ, NKFRAME_PLUGINS="l3,policy,vm", NKFRAME_NO_AGENT="1")
    return subprocess.run([sys.executable, "-m", "nkframe.cli", "--netns", node.netns,
                           "--bpffs-root", root, "vm-netdev", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_vm_netdev_prints_what_qemu_needs(routed, bpffs_root):
    node = routed
    eng = _engine(node, bpffs_root)
    pod = node.pod()
    try:
        ep = eng.add_endpoint(_spec(pod))
        r = _vm_netdev(node, bpffs_root, "vm-a", "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        mac = links.get_link("eth0", netns=pod).address
        xskmap = str(steer.pin_dir(bpffs_root, "vm-a") / "vm_xsks")
        assert doc["argv"] == [
            "-netdev", f"af-xdp,id=nk0,ifname=eth0,mode=native,force-copy=on,queues=1,"
                       f"start-queue=0,inhibit=on,map-path={xskmap}",
            "-device", f"virtio-net-pci,netdev=nk0,mac={mac}"]
        assert doc["placement"] == "pod-queue-copy"
        assert doc["guest"]["addresses"] == [f"{VM4}/32"]
        assert doc["guest"]["gateway4"] == "169.254.1.1"
        assert doc["guest"]["gateway_mac"] == links.get_link(ep.spec.node_ifname, netns=node.netns).address
        plain = _vm_netdev(node, bpffs_root, "vm-a")
        assert plain.returncode == 0 and plain.stdout.split() == doc["argv"]
        assert "placement pod-queue-copy" in plain.stderr
        # Debian 12's QEMU (7.2) predates af-xdp: a clear refusal naming why.
        system = _vm_netdev(node, bpffs_root, "vm-a", "--qemu", "/usr/bin/qemu-system-x86_64")
        assert system.returncode != 0
        assert "predates the af-xdp netdev" in system.stderr, system.stderr
        assert "Traceback" not in system.stderr
    finally:
        eng.remove_endpoint("vm-a")
    gone = _vm_netdev(node, bpffs_root, "vm-a")
    assert gone.returncode != 0 and "vm-a" in gone.stderr and "Traceback" not in gone.stderr


def test_vm_netdev_refuses_a_pod_endpoint_and_missing_steering(node, bpffs_root):
    eng = _engine(node, bpffs_root)
    try:
        eng.add_endpoint(EndpointSpec(id="pod-p", netns=node.pod(), addresses=["10.230.0.20/32"]))
        r = _vm_netdev(node, bpffs_root, "pod-p")
        assert r.returncode != 0 and "not a VM endpoint" in r.stderr, r.stderr
        eng.add_endpoint(_spec(node.pod()))
        os.unlink(steer.pin_dir(bpffs_root, "vm-a") / "link")
        r = _vm_netdev(node, bpffs_root, "vm-a")
        assert r.returncode != 0 and "steering link is not pinned" in r.stderr, r.stderr
    finally:
        for eid in eng.layout.endpoint_ids():
            eng.remove_endpoint(eid)


def test_status_shows_the_placement_and_flags_lost_steering(served, bpffs_root):
    """The plugin's report (nkframe_endpoint_report): placement and steering in status; steering
    that is gone (its link pin deleted, which detaches it) is a problem for status --check and
    reconcile, while a pod endpoint beside it gets no VM details."""
    from nkframe import status

    node, eng, pod = served
    ep = eng.add_endpoint(_spec(pod))
    eng.add_endpoint(EndpointSpec(id="pod-p", netns=node.pod(), addresses=["10.230.0.20/32"]))
    st = steer.read_steering(bpffs_root, ep.spec)
    got = {e.id: e for e in status.gather(eng).endpoints}
    facts = got["vm-a"].details[nkframe_vm.__name__]
    assert facts["placement"] == "pod-queue-copy", facts
    assert facts["steering"] == f"prog {st.prog_id} on ifindex {st.ifindex}", facts
    assert facts["xskmap"] == st.xskmap and os.path.exists(facts["xskmap"])
    assert got["vm-a"].problems == () and got["pod-p"].details == {}, got
    doc = status.to_dict(status.gather(eng, ["vm-a"]))
    assert doc["endpoints"][0]["details"][nkframe_vm.__name__]["placement"] == "pod-queue-copy"
    assert eng.reconcile().problems == ()

    os.unlink(steer.pin_dir(bpffs_root, "vm-a") / "link")  # the last pin: the kernel detaches
    assert _xdp_prog(pod) == 0
    again = status.gather(eng, ["vm-a"]).endpoints[0]
    assert again.details[nkframe_vm.__name__]["steering"] == "not attached"
    assert any("VM steering not whole: the steering link is not pinned" in p
               for p in again.problems), again.problems
    rep = eng.reconcile()
    assert "vm-a" in rep.healthy and any(p.startswith("vm-a: plugin ") and "not pinned" in p
                                         for p in rep.problems), rep
    env = dict(os.environ, NKFRAME_PLUGINS="l3,policy,vm", NKFRAME_NO_AGENT="1")
    r = subprocess.run([sys.executable, "-m", "nkframe.cli", "--netns", node.netns,
                        "--bpffs-root", bpffs_root, "status", "--check", "vm-a"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "VM steering not whole" in r.stdout + r.stderr, (r.stdout, r.stderr)
