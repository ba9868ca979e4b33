"""A real guest on nkframe's AF_XDP datapath, end to end.

The node runs the agent (plugins l3, policy, vm); a VM endpoint is added through it with a
policy; ``nkframe vm-netdev --json --qemu Q`` gives the arguments, which start the af-xdp QEMU
(tools/qemu_afxdp.py, TCG) in the endpoint's pod namespace, booting a Debian kernel with a
busybox initramfs (tools/vm_guest.py) that configures its virtio NIC from the guest settings
vm-netdev printed.  Then, from the outside namespace, through the uplink, the node and the
VM's pod side:

* ping and UDP echo reach the guest and come back;
* a UDP port the policy denies on ingress never reaches the VM's socket (the steering counters
  say so), and a reply the policy denies on egress never leaves the node;
* the agent is killed (SIGKILL) and restarted while a UDP stream runs: not one packet is lost,
  the steering never depended on the agent;
* deleting the endpoint under the running QEMU leaves nothing pinned and no device, and QEMU
  does not crash.

Placement here: the fallback, AF_XDP copy mode on the pod-side device's queue 0 (veth on this
kernel, a netkit peer on the VM tiers'); the leased-queue placement is tested without a guest
(test_vm_lease.py, on 7.x).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from nkframe import netns
from nkframe.netlink import links
from nkframe_vm import steer

from node_agent import GUEST_MARKS, NodeAgent, check_guest_traffic, nk, vm_guest  # tests/host, beside this file

pytestmark = GUEST_MARKS

VM4 = "10.230.0.10"
ECHO, DENIED_IN, EGRESS_DENIED_SPORT = 7, 7001, 40999
BOOT_TIMEOUT = 240
POLICY = {
    "ingress": [{"action": "deny", "cidr": "0.0.0.0/0", "proto": "udp", "ports": DENIED_IN}],
    "egress": [{"action": "deny", "cidr": "192.0.2.2/32", "proto": "udp",
                "ports": EGRESS_DENIED_SPORT}],
}


def test_guest_pings_and_echoes_through_nkframe(node, bpffs_root, qemu_afxdp, guest_kernel,
                                                tmp_path):
    links.add_route("10.230.0.0/16", via="192.0.2.1", netns=node.outside)
    sock = str(tmp_path / "agent.sock")
    agent = NodeAgent(node, bpffs_root, sock, tmp_path / "agent.log")
    pod = node.pod("vmpod")
    qemu = None
    serial = tmp_path / "serial.log"
    agent.start()
    try:
        pol = tmp_path / "policy.json"
        pol.write_text(json.dumps(POLICY))
        nk(node, bpffs_root, sock, "endpoint", "add", "vm-g", "--pod-netns", pod,
            "--address", f"{VM4}/32", "--option", 'vm={"queues": 1}', "--option",
            f"policy=@{pol}")
        doc = json.loads(nk(node, bpffs_root, sock, "vm-netdev", "vm-g", "--json", "--qemu",
                             qemu_afxdp).stdout)
        assert doc["placement"] == "pod-queue-copy"
        g = doc["guest"]
        initrd = vm_guest.build_initramfs(guest_kernel, tmp_path / "guest")
        cmdline = vm_guest.kernel_cmdline(mac=g["mac"], ip=g["addresses"][0],
                                          gw=g["gateway4"], gwmac=g["gateway_mac"],
                                          udpecho=(ECHO, DENIED_IN))
        argv = vm_guest.qemu_guest_argv(qemu_afxdp, guest_kernel, initrd, cmdline, serial,
                                        doc["argv"])
        t0 = time.monotonic()
        qemu = subprocess.Popen(["nsenter", f"--net={netns.netns_path(pod)}", *argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        vm_guest.wait_for(serial, "NKGUEST READY", BOOT_TIMEOUT, proc=qemu)
        print(f"guest ready in {time.monotonic() - t0:.1f} s")

        check_guest_traffic(node, qemu, VM4, ECHO, t0)

        # ingress deny: never reaches the socket
        before = steer.vm_counters(bpffs_root, "vm-g")
        assert vm_guest.udp_echo(node.outside, VM4, DENIED_IN, [b"denied"] * 3, timeout=2) == []
        after = steer.vm_counters(bpffs_root, "vm-g")
        assert after["to_socket"] == before["to_socket"], (before, after)
        # egress deny: the request reaches the guest, its reply does not leave the node
        before = after
        assert vm_guest.udp_echo(node.outside, VM4, ECHO, [b"no way back"] * 3, sport=EGRESS_DENIED_SPORT,
                    timeout=2) == []
        after = steer.vm_counters(bpffs_root, "vm-g")
        assert after["to_socket"] - before["to_socket"] >= 3, (before, after)

        # the agent dies and comes back while a stream runs: nothing lost
        stream = [f"s{i}".encode() for i in range(60)]
        with netns.enter(node.outside):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(10)
        got = 0
        try:
            for i, p in enumerate(stream):
                if i == 10:
                    agent.kill()
                if i == 30:
                    agent.start()
                s.sendto(p, (VM4, ECHO))
                while True:
                    data, _ = s.recvfrom(2048)
                    if data == p:
                        got += 1
                        break
        except socket.timeout:
            pass
        finally:
            s.close()
        assert got == len(stream), f"{len(stream) - got} of {len(stream)} lost"
        assert steer.read_steering(bpffs_root, _spec_of(bpffs_root, "vm-g")).attached

        # deleting the endpoint under a running QEMU: nothing left, QEMU does not crash
        nk(node, bpffs_root, sock, "endpoint", "del", "vm-g")
        assert not steer.pin_dir(bpffs_root, "vm-g").exists()
        assert not (Path(bpffs_root) / "endpoints" / "vm-g").exists()
        assert not links.link_exists("eth0", netns=pod)
        time.sleep(1)
        assert qemu.poll() is None or qemu.returncode in (0, 1), qemu.communicate()
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
            assert "Segmentation" not in err and "core dumped" not in err, err
        nk(node, bpffs_root, sock, "endpoint", "del", "vm-g", check=False)
        agent.stop()
        if serial.exists():
            print(serial.read_text()[-3000:])


def _spec_of(root: str, endpoint_id: str):
    from nkframe import specstore
    from nkframe.pins import Layout

    return specstore.load(Layout(root).spec_path(endpoint_id))
