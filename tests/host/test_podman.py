"""A real container runtime on nkframe's CNI plugin (issue 16): Debian's podman 4.3 with its CNI
backend and runc, exec'ing ``nkframe-cni-shim`` as a runtime does.

Everything podman needs is private to the test: its storage (``--root``/``--runroot`` in the
test's directory), its configuration (``CONTAINERS_CONF``: the CNI backend, our plugin directory,
our network configuration directory), and the image (busybox-static imported as a root file
system).  The agent serves the test's node namespace, and podman itself runs in that namespace
(as a runtime on an nkframe node does), so every device, qdisc and iptables rule lands in
namespaces the test (or podman, for containers) made; the fixture checks that the machine's own
namespace has the same devices and nftables ruleset afterwards.  Containers run with runc: crun
refuses this machine's hybrid cgroup layout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requires
from nkframe import netns
from nkframe.netlink import links
from test_cni_runtime import Harness
from test_cni_shim import shim  # noqa: F401 - fixture

pytestmark = pytest.mark.root

SUBNET = "10.78.0.0/24"


class Podman:
    def __init__(self, harness: Harness):
        self.exe = requires.tool("podman", "podman")
        requires.tool("runc", "runc")
        busybox = requires.tool("/bin/busybox", "busybox-static")
        # podman refuses a runroot path over 50 characters: pytest's tmp_path is longer.
        self.dir = Path(tempfile.mkdtemp(prefix="nkpm-", dir="/tmp"))
        self.netd = self.dir / "net.d"
        self.netd.mkdir(parents=True)
        conf = self.dir / "containers.conf"
        conf.write_text(
            "[containers]\n"
            "default_ulimits = []\n"  # podman's default nofile limit is above this machine's
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{harness.cni_path}"]\n'
            f'network_config_dir = "{self.netd}"\n'
        )
        self.socket = harness.socket
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        # podman (and so every CNI plugin it execs, conmon and its cleanup process) runs in the
        # node namespace the agent serves, as a runtime on an nkframe node does: portmap's
        # iptables rules, bandwidth's qdiscs and ifb devices land there, never in the machine's
        # own namespace.  Only the network namespace: the containers' /run/netns mounts must be
        # visible to the agent (this process).
        self.base = ["nsenter", f"--net={netns.netns_path(harness.node.netns)}", self.exe, "--root", str(self.dir / "root"), "--runroot", str(self.dir / "runroot"),
                     "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
        rootfs = self.dir / "rootfs.tar"
        with tarfile.open(rootfs, "w") as t:
            t.add(busybox, "bin/busybox")
            for applet in ("sh", "ping", "ip", "nc", "sleep", "cat", "echo", "hostname", "wget", "dd"):
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                t.addfile(info)
        self.run("import", str(rootfs), "localhost/nkbox")

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        p = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {p.returncode}: {p.stderr.strip()[-1500:]}")
        return p

    def network(self, name: str, ipam_dir, subnet: str = SUBNET, *, subnet6: str | None = None,
                chain: list | None = None, **plugin) -> None:
        # agentSocket in the configuration: podman's cleanup process (CNI DEL when a container
        # exits) runs without the runtime's environment, so NKFRAME_AGENT_SOCKET would not reach it.
        doc = {"cniVersion": "1.0.0", "name": name, "plugins": [
            {"type": "nkframe", "agentSocket": self.socket, **plugin,
             "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                      "ranges": [[{"subnet": subnet}]] + ([[{"subnet": subnet6}]] if subnet6 else [])}},
            *(chain or [])]}
        (self.netd / f"{name}.conflist").write_text(json.dumps(doc))

    def client(self, network: str, script: str) -> str:
        """Run ``script`` in a new container on ``network`` and remove it; its output.

        Not ``podman run --rm``: podman removes such a container from a cleanup process that
        conmon starts with the system's configuration (cni_plugin_dirs are not passed on), so
        with this test's private configuration its CNI DEL would not find our plugin.  A runtime
        configured in /etc/containers has no such split."""
        name = f"client-{os.urandom(3).hex()}"
        self.run("run", "-d", "--name", name, "--network", network, "localhost/nkbox", "/bin/sleep", "600")
        try:
            return self.run("exec", name, "/bin/sh", "-c", script).stdout
        finally:
            self.run("rm", "-f", "-t", "0", name)

    def address(self, container: str, network: str, v6: bool = False) -> str:
        doc = json.loads(self.run("inspect", container).stdout)[0]
        return doc["NetworkSettings"]["Networks"][network]["GlobalIPv6Address" if v6 else "IPAddress"]

    def cleanup(self) -> None:
        self.run("rm", "-a", "-f", "-t", "0", check=False)
        self.run("system", "reset", "--force", check=False, timeout=60)
        # runc's state and podman's storage (vfs copies, no mounts left after rm)
        shutil.rmtree(self.dir, ignore_errors=True)


def _machine_state() -> tuple[set[str], str]:
    """The machine's own namespace (read only): its device names and its nftables ruleset
    (iptables-nft's rules included), to prove podman and the chained plugins left it alone."""
    nft = requires.tool("nft", "nftables")
    devices = {l.name for l in links.list_links()}
    return devices, subprocess.run([nft, "list", "ruleset"], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def podman(shim):
    """podman, configured privately and running in the node namespace, on an agent
    (test_cni_shim's harness) that execs the shim."""
    p = None
    machine = _machine_state()
    try:
        p = Podman(shim)
        yield p, shim
    finally:
        if p is not None:
            p.cleanup()
    assert _machine_state() == machine, "the machine's own devices or nftables rules changed"


@pytest.mark.parametrize("mode", ["l3", "l2"])
def test_podman_containers_reach_each_other_and_leave_nothing(podman, mode):
    """docs/cni.md's configuration, both modes: containers start (the ADD result carries the
    MACs podman insists on), talk to each other (ICMP and TCP), and their removal takes every
    device, endpoint and lease away."""
    pm, h = podman
    before = h.node_links()
    pm.network("nknet", h.ipam_dir, mode=mode)
    pm.run("run", "-d", "--name", "server", "--network", "nknet", "localhost/nkbox",
           "/bin/sh", "-c", "while true; do echo pong | nc -l -p 7000; done")
    server = pm.address("server", "nknet")
    assert server.startswith("10.78.0.")
    out = pm.client("nknet", f"ip -o addr show eth0; ping -c 2 -W 2 {server} && echo | nc -w 3 {server} 7000")
    assert "2 packets received" in out, out
    assert "pong" in out, out
    assert len(h.endpoint_ids()) == 1, "the client container's endpoint is gone again"
    assert set(h.leases("nknet")) == {server}
    pm.run("rm", "-f", "-t", "0", "server")
    assert h.endpoint_ids() == []
    assert h.leases("nknet") == {}
    assert h.node_links() == before


def test_podman_sixteen_containers_in_parallel(podman):
    """16 starts at once, then 16 removals at once: distinct addresses, all reachable, nothing
    left (the issue measured the start times; bench/ holds the figures)."""
    pm, h = podman
    before = h.node_links()
    pm.network("nkpar", h.ipam_dir, mode="l3")
    names = [f"c{i}" for i in range(16)]
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda n: pm.run("run", "-d", "--name", n, "--network", "nkpar", "localhost/nkbox", "/bin/sleep", "600"), names))
    addrs = {n: pm.address(n, "nkpar") for n in names}
    assert len(set(addrs.values())) == 16
    assert len(h.endpoint_ids()) == 16
    probe = " && ".join(f"ping -c 1 -W 2 {a} >/dev/null" for a in addrs.values())
    pm.client("nkpar", probe)
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda n: pm.run("rm", "-f", "-t", "0", n), names))
    assert h.endpoint_ids() == []
    assert h.leases("nkpar") == {}
    assert h.node_links() == before


def test_podman_policy_from_the_network_configuration(podman):
    """A policy in the conflist (``policy`` key) is enforced for containers podman starts: the
    guarded container answers nobody on a port the policy does not allow, and does on one it
    allows."""
    pm, h = podman
    policy = {"default_ingress": "deny", "default_egress": "allow",
              "ingress": [{"action": "allow", "cidr": "10.78.1.0/24", "proto": "tcp", "ports": 7001}]}
    pm.network("nkopen", h.ipam_dir, subnet="10.78.1.0/24", mode="l3")
    pm.network("nkguard", h.ipam_dir, subnet="10.78.2.0/24", mode="l3", policy=policy)
    pm.run("run", "-d", "--name", "guarded", "--network", "nkguard", "localhost/nkbox", "/bin/sh", "-c",
           "(while true; do echo seven | nc -l -p 7000; done) & while true; do echo one | nc -l -p 7001; done")
    guarded = pm.address("guarded", "nkguard")
    out = pm.client("nkopen", f"echo | nc -w 2 {guarded} 7001; echo | nc -w 2 {guarded} 7000; ping -c 1 -W 1 {guarded}; true")
    assert "one" in out, out
    assert "seven" not in out, out
    assert "0 packets received" in out, out
    pm.run("rm", "-f", "-t", "0", "guarded")
    assert h.endpoint_ids() == []


def test_podman_dual_stack_and_a_chained_plugin(podman):
    """IPv4 and IPv6 from one host-local configuration, and ``tuning`` chained after nkframe
    (it sets a sysctl in the container's namespace from nkframe's result)."""
    pm, h = podman
    requires.tool("/usr/lib/cni/tuning", "containernetworking-plugins")
    (Path(h.cni_path) / "tuning").symlink_to("/usr/lib/cni/tuning")
    before = h.node_links()
    pm.network("nkdual", h.ipam_dir, subnet6="fd00:78::/64", mode="l3",
               chain=[{"type": "tuning", "sysctl": {"net.core.somaxconn": "777"}}])
    pm.run("run", "-d", "--name", "server", "--network", "nkdual", "localhost/nkbox", "/bin/sleep", "600")
    v4, v6 = pm.address("server", "nkdual"), pm.address("server", "nkdual", v6=True)
    assert v4.startswith("10.78.0.") and v6.startswith("fd00:78::"), (v4, v6)
    out = pm.client("nkdual", f"cat /proc/sys/net/core/somaxconn; ping -c 2 -W 2 {v4}; ping -c 2 -W 2 {v6}")
    assert out.splitlines()[0] == "777", out
    assert out.count("2 packets received") == 2, out
    pm.run("rm", "-f", "-t", "0", "server")
    assert h.endpoint_ids() == [] and h.leases("nkdual") == {}
    assert h.node_links() == before



# ----------------------------------------------------------------------------------------------
# portmap and bandwidth (containernetworking-plugins) chained after nkframe

NODE_ADDR = "192.0.2.1"  # the node's uplink address (conftest's Node)
RATE = 16_000_000  # bandwidth's rates are in bits per second
BURST = 800_000  # bits: tbf gets a 100 kB bucket
SIZE = 3_000_000  # bytes moved through each limit


def _chain_plugins(h: Harness, *types: str) -> None:
    for t in types:
        requires.tool(f"/usr/lib/cni/{t}", "containernetworking-plugins")
        (Path(h.cni_path) / t).symlink_to(f"/usr/lib/cni/{t}")


def _in_node(h: Harness, *cmd: str) -> str:
    return subprocess.run(["nsenter", f"--net={netns.netns_path(h.node.netns)}", *cmd],
                          capture_output=True, text=True, check=True, timeout=20).stdout


def _node_rules(h: Harness) -> list[str]:
    """The node namespace's iptables rules (both families), as ``iptables-save`` writes them."""
    requires.tool("iptables-save", "iptables")
    return [line for tool in ("iptables-save", "ip6tables-save")
            for line in _in_node(h, tool).splitlines() if line.startswith("-A ")]


def _qdiscs(h: Harness) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for q in json.loads(_in_node(h, "tc", "-s", "-j", "qdisc", "show")):
        out.setdefault(q["dev"], []).append(q)
    return out


def _ask(netns_name: str, addr: str, port: int, timeout: float = 5) -> bytes:
    """One TCP exchange from ``netns_name``: connect, send a line, read until the peer closes.
    A refused connection is tried again for a while: the container's ``nc -l`` loop takes a
    moment to listen again after the previous exchange."""
    for _ in range(20):
        try:
            with netns.enter(netns_name):
                s = socket.create_connection((addr, port), timeout=timeout)
            break
        except ConnectionRefusedError:
            time.sleep(0.1)
    else:
        raise AssertionError(f"{addr}:{port} refused every connection from {netns_name}")
    with s:
        s.sendall(b"\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data


def _timed_transfer(pm: Podman, node_netns: str, port: int, container: str, size: int, *, to_container: bool) -> float:
    """Seconds ``size`` bytes take between a socket in the node namespace and ``container``.

    The container is the client either way (``wget`` pulls, ``dd | nc`` pushes) and the clock
    runs on the node's side: from the first byte sent until wget has read them all and closed,
    or from the first byte received to the last."""
    with netns.enter(node_netns):
        ls = socket.create_server(("0.0.0.0", port))
    blocks = -(-size // 65536)
    script = (f"wget -q -O /dev/null http://{NODE_ADDR}:{port}/" if to_container
              else f"dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | nc {NODE_ADDR} {port}")
    client = threading.Thread(target=pm.run, args=("exec", container, "/bin/sh", "-c", script))
    with ls:
        ls.settimeout(30)
        client.start()
        conn, _ = ls.accept()
        with conn:
            conn.settimeout(30)
            if to_container:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                start = time.monotonic()
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % size + bytes(size))
                assert conn.recv(1) == b""  # wget read the whole body, then closed
                elapsed = time.monotonic() - start
            else:
                got, start = 0, None
                while chunk := conn.recv(1 << 16):
                    start = start or time.monotonic()
                    got += len(chunk)
                elapsed = time.monotonic() - start
                assert got == blocks * 65536, got
    client.join(30)
    return elapsed


def test_podman_portmap_and_bandwidth_chained_after_nkframe(podman):
    """``portmap`` and ``bandwidth`` after nkframe, as a user chains them, from nkframe's result
    (the node-side device without ``sandbox``, the container's with it, the addresses on the
    container's): a published port reaches the container's listener through the node's address
    and through 127.0.0.1; ``bandwidth`` puts tbf on nkframe's node-side device (traffic to the
    container) and on an ifb device (traffic from it), and the measured rate both ways is the
    configured one; ``podman rm`` takes the container's DNAT rules, the qdiscs and the ifb away."""
    pm, h = podman
    _chain_plugins(h, "portmap", "bandwidth")
    before = h.node_links()
    assert _node_rules(h) == []
    pm.network("nkchain", h.ipam_dir, mode="l3", chain=[
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "ingressRate": RATE, "ingressBurst": BURST, "egressRate": RATE, "egressBurst": BURST}])
    pm.run("run", "-d", "--name", "server", "--network", "nkchain", "-p", "18080:7000", "localhost/nkbox", "/bin/sh", "-c",
           "while true; do echo pong | nc -l -p 7000; done")
    server = pm.address("server", "nkchain")
    cid = json.loads(pm.run("inspect", "server").stdout)[0]["Id"]

    # portmap: DNAT of node-address:18080 (and 127.0.0.1:18080) to the container's 7000
    rules = _node_rules(h)
    jump = next(r for r in rules if cid in r)  # CNI-HOSTPORT-DNAT -> the container's own chain
    chain = jump.split(" -j ")[-1]
    mine = [r for r in rules if r == jump or r.startswith(f"-A {chain} ")]
    assert f"-A {chain} -p tcp -m tcp --dport 18080 -j DNAT --to-destination {server}:7000" in mine, rules
    assert _ask(h.node.netns, NODE_ADDR, 18080) == b"pong\n"
    assert _ask(h.node.netns, "127.0.0.1", 18080) == b"pong\n"

    # bandwidth: tbf on nkframe's node-side device and on the ifb device bandwidth made
    host_dev = next(i for i in h.node_links() - before if i.startswith("nk"))
    ifb = next(i for i in h.node_links() - before if i != host_dev)
    qd = _qdiscs(h)
    assert [q["kind"] for q in qd[host_dev]] == ["tbf", "ingress"], qd
    assert [q["kind"] for q in qd[ifb]] == ["tbf"], qd
    assert qd[host_dev][0]["options"]["rate"] == RATE // 8 == qd[ifb][0]["options"]["rate"], qd
    to_ctr = SIZE / _timed_transfer(pm, h.node.netns, 7001, "server", SIZE, to_container=True) * 8
    from_ctr = SIZE / _timed_transfer(pm, h.node.netns, 7002, "server", SIZE, to_container=False) * 8
    qd = _qdiscs(h)
    assert qd[host_dev][0]["bytes"] >= SIZE and qd[ifb][0]["bytes"] >= SIZE, qd
    print(f"through bandwidth's tbf at {RATE / 1e6:.0f} Mbit/s: to the container {to_ctr / 1e6:.1f} Mbit/s, "
          f"from it {from_ctr / 1e6:.1f} Mbit/s")
    # Never above the limit (the bucket's 100 kB of SIZE aside); unlimited, veth moves GB/s.
    for rate in (to_ctr, from_ctr):
        assert RATE / 4 < rate < RATE * 1.15, (to_ctr, from_ctr)

    pm.run("rm", "-f", "-t", "0", "server")
    left = _node_rules(h)
    assert left == [r for r in rules if r not in mine], (rules, left)
    assert not [r for r in left if cid in r or server in r or "CNI-DN-" in r], left
    print(f"iptables rules in the node namespace: {len(rules)} with the container, {len(left)} after podman rm "
          f"(portmap's node-wide chains, never removed by portmap; they go with the namespace)")
    assert set(_qdiscs(h)) == {"lo", h.node.uplink}
    assert h.node_links() == before
    assert h.endpoint_ids() == [] and h.leases("nkchain") == {}


@pytest.mark.xfail(strict=True, reason="nkframe's L3 datapath sends the container's replies to the uplink with "
                   "bpf_redirect_neigh, past netfilter, so portmap's DNAT is never reversed: the client outside the "
                   "node gets SYN-ACKs from the container's address and port, not from the node's")
def test_podman_portmap_from_outside_the_node(podman):
    """A published port reached from the outside namespace (another host on the uplink)."""
    pm, h = podman
    _chain_plugins(h, "portmap")
    pm.network("nkpub", h.ipam_dir, mode="l3", chain=[{"type": "portmap", "capabilities": {"portMappings": True}}])
    pm.run("run", "-d", "--name", "server", "--network", "nkpub", "-p", "18080:7000", "localhost/nkbox",
           "/bin/sh", "-c", "while true; do echo pong | nc -l -p 7000; done")
    try:
        assert _ask(h.node.outside, NODE_ADDR, 18080, timeout=3) == b"pong\n"
    finally:
        pm.run("rm", "-f", "-t", "0", "server")
