"""A real container runtime on nkframe's CNI plugin (issue 16): Debian's podman 4.3 with its CNI
backend and runc, exec'ing ``nkframe-cni-shim`` as a runtime does.

Everything podman needs is private to the test: its storage (``--root``/``--runroot`` in the
test's directory), its configuration (``CONTAINERS_CONF``: the CNI backend, our plugin directory,
our network configuration directory), and the image (busybox-static imported as a root file
system).  The agent serves the test's node namespace, so every device lands in namespaces the
test (or podman, for containers) made.  Containers run with runc: crun refuses this machine's
hybrid cgroup layout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requires
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
        self.base = [self.exe, "--root", str(self.dir / "root"), "--runroot", str(self.dir / "runroot"),
                     "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
        rootfs = self.dir / "rootfs.tar"
        with tarfile.open(rootfs, "w") as t:
            t.add(busybox, "bin/busybox")
            for applet in ("sh", "ping", "ip", "nc", "sleep", "cat", "echo", "hostname", "wget"):
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


@pytest.fixture
def podman(shim):
    """podman, configured privately, on an agent (test_cni_shim's harness) that execs the shim."""
    p = None
    try:
        p = Podman(shim)
        yield p, shim
    finally:
        if p is not None:
            p.cleanup()


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
