"""No open window: a pod can neither send nor receive between its device's creation and its
policy being in place.

The policy here drops everything (count.c with verdict 2, counting what it drops), so once it is
live no datagram may ever be delivered; before it is live the device must be closed (netkit
peers blackholed, veth down).  While endpoints are added -- with the gap between device creation
and program attachment stretched to 300 ms -- two floods run:

* pod -> node: raw IPv4/UDP frames sent on the pod's interface with a packet socket from the
  moment it exists (no address or route needed), received by a UDP socket on the node;
* node -> pod: UDP to the pod's address through a host route added the moment the node's
  device accepts one, seen by a packet socket in the pod.

Zero deliveries are allowed.  A control run with a device plugin that opens the device at once
must see deliveries, or the test could not fail.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time

import pytest
from agent_support import NETKIT, Counting, counts, need

from nkframe import hookimpl, netns
from nkframe.context import DeviceInfo
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.types import DeviceKind, EndpointSpec

pytestmark = pytest.mark.root

NODE_IP = "10.77.40.1"
PORT = 7401
ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


class Slow:
    """Stretches the gap between device creation and program attachment."""

    @hookimpl(wrapper=True)
    def nkframe_device_create(self, ctx):
        dev = yield
        time.sleep(0.3)
        return dev


class Leaky:
    """The control: a device plugin that breaks the rule -- the veth pair is up at once."""

    @hookimpl(tryfirst=True)
    def nkframe_device_create(self, ctx):
        spec = ctx.spec
        pair = links.create_veth(links.VethSpec(name=spec.node_ifname, peer_name=spec.ifname, peer_netns=spec.netns), netns=ctx.node_netns)
        ctx.undo.push("delete", lambda: links.delete_link(spec.node_ifname, netns=ctx.node_netns, missing_ok=True))
        links.set_up(spec.node_ifname, netns=ctx.node_netns)
        links.set_up(spec.ifname, netns=spec.netns)
        return DeviceInfo(kind=DeviceKind.VETH, mode=spec.mode, node_ifname=spec.node_ifname, node_ifindex=pair.ifindex, pod_ifname=spec.ifname, pod_ifindex=pair.peer_ifindex, reason="leaky control")


def _ip_udp(src: str, dst: str, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, PORT, 8 + len(payload), 0) + payload  # checksum 0: none (IPv4)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    csum = sum(struct.unpack("!10H", hdr))
    while csum >> 16:
        csum = (csum & 0xFFFF) + (csum >> 16)
    return hdr[:10] + struct.pack("!H", ~csum & 0xFFFF) + hdr[12:] + udp


class Floods:
    def __init__(self, node_netns: str, pod: str, spec: EndpointSpec):
        self.node, self.pod, self.spec = node_netns, pod, spec
        self.pod_ip = str(spec.addresses[0].ip)
        self.stop = threading.Event()
        self.delivered = {"pod->node": 0, "node->pod": 0}
        self.sent = {"pod->node": 0, "node->pod": 0}
        with netns.enter(node_netns):
            self.node_rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.node_tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Datagrams waiting for ARP hold send-buffer space; don't block behind them.
        self.node_tx.setblocking(False)
        self.node_rx.bind((NODE_IP, PORT))
        self.node_rx.settimeout(0.05)
        with netns.enter(pod):
            self.pod_rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.pod_rx.settimeout(0.05)
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._pod_send, self._node_send, self._node_recv, self._pod_recv)]
        for t in self.threads:
            t.start()

    def _pod_send(self):
        tx = None
        frame = _ip_udp(self.pod_ip, NODE_IP, b"NKWIN-p2n")
        while not self.stop.is_set():
            if tx is None:
                try:
                    with netns.enter(self.pod):
                        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
                        try:
                            s.bind((self.spec.ifname, ETH_P_IP))
                        except OSError:
                            s.close()
                            continue  # not there yet
                    tx = s
                except OSError:
                    continue
            try:
                tx.sendto(frame, (self.spec.ifname, ETH_P_IP, 0, 0, b"\xff" * 6))
                self.sent["pod->node"] += 1
            except OSError:
                pass  # ENETDOWN: the device is (rightly) closed
            time.sleep(0.0002)  # ~5,000 per second: a flood, and the engine still gets the GIL
        if tx is not None:
            tx.close()

    def _node_send(self):
        routed = False
        while not self.stop.is_set():
            if not routed:
                try:
                    links.add_host_route(self.pod_ip, self.spec.node_ifname, netns=self.node)
                    routed = True
                except Exception:  # noqa: BLE001 - no device yet, or it is down
                    time.sleep(0.005)
                    continue
                # No ARP (a closed pod could not answer, nor one without its address yet): the
                # frames go out at once to a made-up MAC; a packet socket in the pod sees
                # frames for other hosts too.
                try:
                    links.add_neighbour(self.spec.node_ifname, self.pod_ip, "02:00:00:4e:4b:01", netns=self.node)
                except Exception:  # noqa: BLE001 - netkit L3 has no neighbours to set
                    pass
            try:
                self.node_tx.sendto(b"NKWIN-n2p", (self.pod_ip, PORT))
                self.sent["node->pod"] += 1
            except OSError:
                pass
            time.sleep(0.0002)

    def _node_recv(self):
        while not self.stop.is_set():
            try:
                data = self.node_rx.recv(64)
            except TimeoutError:
                continue
            if data == b"NKWIN-p2n":
                self.delivered["pod->node"] += 1

    def _pod_recv(self):
        while not self.stop.is_set():
            try:
                data, addr = self.pod_rx.recvfrom(2048)
            except TimeoutError:
                continue
            if addr[2] != PACKET_OUTGOING and data.endswith(b"NKWIN-n2p"):
                self.delivered["node->pod"] += 1

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(5)
        for s in (self.node_rx, self.node_tx, self.pod_rx):
            s.close()


@pytest.fixture
def prepared_node(node):
    links.add_address("lo", f"{NODE_IP}/32", netns=node.netns)
    for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"):
        links.sysctl(key, 0, netns=node.netns)
    return node


def _run(node, bpffs_root, plugins, eid, n, device="auto"):
    eng = Engine(node.netns, bpffs_root, plugin_objects=plugins, autoload=False)
    totals = {"pod->node": 0, "node->pod": 0}
    policed = 0
    for i in range(n):
        pod = node.pod()
        spec = EndpointSpec(id=f"{eid}-{i}", netns=pod, addresses=[f"10.77.40.{10 + i}/32"], device=device)
        floods = Floods(node.netns, pod, spec)
        try:
            time.sleep(0.05)
            t0 = time.monotonic()
            eng.add_endpoint(spec)
            added = time.monotonic() - t0
            time.sleep(0.3)  # keep flooding with the policy live
        finally:
            floods.close()
        print(f"{spec.id}: add {1000 * added:.0f} ms, sent {floods.sent}, delivered {floods.delivered}")
        for k, v in floods.delivered.items():
            totals[k] += v
        policed += counts(bpffs_root, spec.id, 0) + counts(bpffs_root, spec.id, 1)
        eng.remove_endpoint(spec.id)
    return totals, policed


@pytest.mark.parametrize("device", ["auto", "veth", NETKIT])
def test_nothing_passes_before_the_policy_is_live(prepared_node, bpffs_root, device):
    need(device)
    totals, policed = _run(prepared_node, bpffs_root, [Counting(verdict=2), Slow()], "win", 3, device)
    assert totals == {"pod->node": 0, "node->pod": 0}, f"delivered before the policy was live: {totals}"
    assert policed > 0, "the floods reached the device once it opened (and the policy dropped them)"


def test_control_a_device_opened_early_leaks(prepared_node, bpffs_root):
    totals, _ = _run(prepared_node, bpffs_root, [Counting(verdict=2), Leaky(), Slow()], "leak", 2)
    assert totals["pod->node"] > 0 and totals["node->pod"] > 0, f"the control did not leak both ways: {totals}"
