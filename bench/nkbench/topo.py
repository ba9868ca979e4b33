"""Namespaces, bpffs mounts, processes and CNI invocations, all owned by one :class:`Scope`
that takes everything down again (newest first) even when a section fails.

Topology of a node (the same shape as ``nkframe demo`` and the test fixtures)::

    outside netns                node netns                       pod netns
    ext0 192.0.2.2/24 ──veth── up0 192.0.2.1/24  ── pair ──  eth0 <pod address>

The machine's own interfaces, routes and bpffs are never touched.

Everything a Scope makes is named after the harness's pid (namespaces ``nkb-<pid>-...``,
directories ``<tmp>/nkbench-<kind>-<pid>-...``), so what a SIGKILLed run could not take down is
recognisable afterwards: :func:`remove_stale` deletes what belongs to pids no longer running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from typing import Any, Callable, Sequence

from nkframe import netns, pins
from nkframe.netlink import links
from nkframe.probe import process_alive

OUT_V4, NODE_V4 = "192.0.2.2", "192.0.2.1"
CNI_PATH = "/usr/lib/cni"


class Scope:
    """Owns what a section creates.  ``close()`` undoes it all, newest first, and never raises."""

    def __init__(self, log: Callable[[str], None] = lambda s: None):
        self.pid = os.getpid()
        self.tag = uuid.uuid4().hex[:5]
        self._undo: list[tuple[str, Callable[[], None]]] = []
        self._n = 0
        self.log = log

    def defer(self, what: str, fn: Callable[[], None]) -> None:
        self._undo.append((what, fn))

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"nkb-{self.pid}-{prefix}{self._n}-{self.tag}"

    def netns(self, prefix: str) -> str:
        name = self.name(prefix)
        netns.create(name)
        self.defer(f"netns {name}", lambda: netns.delete(name))
        return name

    def tmpdir(self, prefix: str = "nkbench-") -> str:
        d = tempfile.mkdtemp(prefix=f"{prefix}{self.pid}-")
        self.defer(f"dir {d}", lambda: shutil.rmtree(d, ignore_errors=True))
        return d

    def bpffs(self) -> str:
        d = tempfile.mkdtemp(prefix=f"nkbench-bpffs-{self.pid}-")
        pins.mount_bpffs(d)

        def undo() -> None:
            pins.umount(d)
            os.rmdir(d)

        self.defer(f"bpffs {d}", undo)
        return d

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        proc = subprocess.Popen(list(argv), **kw)

        def undo() -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)

        self.defer(f"process {proc.pid}", undo)
        return proc

    def close(self) -> None:
        while self._undo:
            what, fn = self._undo.pop()
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                self.log(f"cleanup {what}: {e}")

    def __enter__(self) -> "Scope":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_STALE_NETNS = re.compile(r"nkb-([1-9][0-9]*)-.+")
_STALE_DIR = re.compile(r"nkbench-(?:[a-z]+-)*([1-9][0-9]*)-[a-z0-9_]+")


def remove_stale(log: Callable[[str], None] = lambda s: None) -> list[str]:
    """Take down what earlier runs killed before their cleanup left: namespaces and directories
    named after a pid that no longer runs (or that a process started later has reused), the
    processes still inside those namespaces (iperf3 servers, an agent) and bpffs mounted on those
    directories.  Returns what was removed."""
    removed: list[str] = []

    def dead(pid: str, path: str) -> bool:
        try:
            made = os.stat(path).st_ctime
        except FileNotFoundError:
            return False  # its owner removed it just now
        return int(pid) != os.getpid() and not process_alive(int(pid), since=made)

    ns_dir = netns.NETNS_RUN_DIR
    names = sorted(os.listdir(ns_dir)) if os.path.isdir(ns_dir) else []
    stale_ns = [n for n in names if (m := _STALE_NETNS.fullmatch(n)) and dead(m.group(1), os.path.join(ns_dir, n))]
    # A process left inside keeps the namespace alive after its name is gone: end those first.
    inodes = {}
    for n in stale_ns:
        try:
            inodes[os.stat(os.path.join(ns_dir, n)).st_ino] = n
        except OSError:
            pass
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            continue
        if ino in inodes and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
                removed.append(f"process {pid} in netns {inodes[ino]}")
            except ProcessLookupError:
                pass
    for n in stale_ns:
        try:
            netns.delete(n)
            removed.append(f"netns {n}")
        except Exception as e:  # noqa: BLE001 - keep cleaning the rest
            log(f"stale netns {n}: {e}")

    tmp = tempfile.gettempdir()
    stale_dirs = [os.path.join(tmp, d) for d in sorted(os.listdir(tmp))
                  if (m := _STALE_DIR.fullmatch(d)) and dead(m.group(1), os.path.join(tmp, d))]
    mounts = _mounts()
    for d in stale_dirs:
        # Deepest first; a directory still mounted on is never walked into.
        for mnt in sorted((m for m in mounts if m == d or m.startswith(d + "/")), key=len, reverse=True):
            try:
                pins.umount(mnt)
                removed.append(f"mount {mnt}")
            except Exception as e:  # noqa: BLE001
                log(f"stale mount {mnt}: {e}")
        if any(m == d or m.startswith(d + "/") for m in _mounts()):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(f"dir {d}")
    for what in removed:
        log(f"removed a leftover of an earlier run: {what}")
    return removed


def _mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f]


def in_netns(ns: str, *argv: str) -> list[str]:
    """argv run in a network namespace only (nsenter --net; /sys and mounts stay ours)."""
    return ["nsenter", f"--net={netns.netns_path(ns)}", *argv]


class Node:
    """A node netns with an uplink to an outside netns, routes to ``pod_net`` via the node."""

    def __init__(self, scope: Scope, pod_nets: Sequence[str] = ("10.0.0.0/8",), prefix: str = "node"):
        self.scope = scope
        self.netns = scope.netns(prefix)
        self.outside = scope.netns("out")
        self.uplink = "up0"
        links.create_veth(links.VethSpec(name=self.uplink, peer_name="ext0", peer_netns=self.outside), netns=self.netns)
        links.add_address(self.uplink, f"{NODE_V4}/24", netns=self.netns)
        links.add_address("ext0", f"{OUT_V4}/24", netns=self.outside)
        for ns, dev in ((self.netns, self.uplink), (self.outside, "ext0")):
            links.set_up("lo", netns=ns)
            links.set_up(dev, netns=ns)
        for net in pod_nets:
            links.add_route(net, via=NODE_V4, netns=self.outside)
        links.sysctl("net.ipv4.ip_forward", 1, netns=self.netns)

    def pod(self, prefix: str = "pod") -> str:
        return self.scope.netns(prefix)


def veth_pair(scope: Scope, a_ip: str = "198.18.0.1", b_ip: str = "198.18.0.2") -> tuple[str, str]:
    """Two namespaces joined by one veth: the machine's limit for one hop."""
    a, b = scope.netns("va"), scope.netns("vb")
    links.create_veth(links.VethSpec(name="eth0", peer_name="eth0", peer_netns=b), netns=a)
    links.add_address("eth0", f"{a_ip}/24", netns=a)
    links.add_address("eth0", f"{b_ip}/24", netns=b)
    for ns in (a, b):
        links.set_up("lo", netns=ns)
        links.set_up("eth0", netns=ns)
    return a, b


# ------------------------------------------------------------------------------------------
# CNI, invoked the way a container runtime does it


class CniError(RuntimeError):
    pass


def ptp_config(data_dir: str, subnet: str = "10.77.0.0/16") -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "benchnet",
        "type": "ptp",
        # A default route, as every real ptp configuration has: without it the pod reaches only
        # its own subnet.
        "ipam": {"type": "host-local", "subnet": subnet, "dataDir": data_dir, "routes": [{"dst": "0.0.0.0/0"}]},
    }


def cni_invoke(command: str, config: dict, *, container_id: str, pod_netns: str, node_netns: str,
               ifname: str = "eth0", plugin_dir: str = CNI_PATH, timeout: float = 60) -> dict:
    """Run the plugin named by ``config["type"]`` from CNI_PATH inside the node's netns, with
    the CNI_* environment and the configuration on stdin.  Returns the parsed result (ADD)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns.netns_path(pod_netns),
        "CNI_IFNAME": ifname,
        "CNI_PATH": plugin_dir,
    }
    binary = os.path.join(plugin_dir, config["type"])
    r = subprocess.run(in_netns(node_netns, binary), input=json.dumps(config), env=env,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise CniError(f"{config['type']} {command} {container_id}: exit {r.returncode}: {r.stdout.strip() or r.stderr.strip()}")
    out = r.stdout.strip()
    return json.loads(out) if out else {}


def have_cni(plugin: str) -> bool:
    return os.access(os.path.join(CNI_PATH, plugin), os.X_OK)


def wait_for(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(step)
