"""Shared fixtures.

Root tests build everything inside namespaces they make (a "node" netns, an "outside" netns joined
by an uplink veth, one netns per pod) and a private bpffs mount; all of it is removed at teardown,
also when the test fails.  The machine's own interfaces are never touched.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid

import pytest

ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    if ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, BPF, bpffs)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def uid() -> str:
    """A short unique suffix for names (device names hold at most 15 bytes)."""
    return uuid.uuid4().hex[:6]


@pytest.fixture(scope="session")
def bpffs():
    """A private bpffs mount for the whole session, unmounted at the end."""
    from nkframe import pins

    d = tempfile.mkdtemp(prefix="nkt-bpffs-")
    pins.mount_bpffs(d)
    try:
        yield d
    finally:
        pins.umount(d)
        os.rmdir(d)


@pytest.fixture
def bpffs_root(bpffs):
    """A fresh directory on the private bpffs for one test."""
    import shutil

    path = os.path.join(bpffs, "t" + uid())
    os.mkdir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_netns():
    """Factory: make_netns('pod') -> a unique netns name, deleted at teardown."""
    from nkframe import netns

    made = []

    def make(prefix: str = "ns") -> str:
        name = f"nkt-{prefix}-{uid()}"
        netns.create(name)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in reversed(made):
            netns.delete(name)


class Node:
    """The test topology: node netns + outside netns joined by an uplink veth."""

    def __init__(self, make_netns):
        from nkframe.netlink import links

        self.netns = make_netns("node")
        self.outside = make_netns("out")
        self.uplink = "up0"
        links.create_veth(links.VethSpec(name=self.uplink, peer_name="ext0", peer_netns=self.outside), netns=self.netns)
        links.add_address(self.uplink, "192.0.2.1/24", netns=self.netns)
        links.add_address("ext0", "192.0.2.2/24", netns=self.outside)
        links.add_address(self.uplink, "2001:db8:ff::1/64", netns=self.netns, nodad=True)
        links.add_address("ext0", "2001:db8:ff::2/64", netns=self.outside, nodad=True)
        for ns, dev in ((self.netns, self.uplink), (self.outside, "ext0")):
            links.set_up("lo", netns=ns)
            links.set_up(dev, netns=ns)
        self._make = make_netns

    def pod(self, prefix: str = "pod") -> str:
        return self._make(prefix)

    def run(self, netns_name: str, *cmd: str, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside a netns (network namespace only, via nsenter; /sys untouched)."""
        path = f"/run/netns/{netns_name}"
        return subprocess.run(["nsenter", f"--net={path}", *cmd], capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture
def node(make_netns):
    return Node(make_netns)


@pytest.fixture
def restore_pyroute2_registry():
    """pyroute2's link-kind registry is process-global (the netlink tests register netkit with
    it as their oracle): leave it as the test found it."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    saved = dict(ifinfmsg.ifinfo.data_map)
    try:
        yield
    finally:
        ifinfmsg.ifinfo.data_map.clear()
        ifinfmsg.ifinfo.data_map.update(saved)


QEMU_AFXDP_TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "qemu_afxdp.py")
QEMU_AFXDP_BUILD_TIMEOUT = 60 * 60


@pytest.fixture(scope="session")
def qemu_afxdp() -> str:
    """The af-xdp QEMU's path: built (or found in the cache, ~/.cache/nkframe/qemu) by
    tools/qemu_afxdp.py, never skipped: a missing build is a failure with the tool's reason."""
    import sys

    tool = os.path.normpath(QEMU_AFXDP_TOOL)
    # Inside a VM tier the host's files are read-only: take the build the host made.
    verb = "path" if os.environ.get("NKFRAME_VM") == "1" else "build"
    try:
        r = subprocess.run([sys.executable, tool, verb], capture_output=True, text=True,
                           timeout=QEMU_AFXDP_BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{tool} build took over {QEMU_AFXDP_BUILD_TIMEOUT} s", pytrace=False)
    if r.returncode != 0:
        pytest.fail(f"the af-xdp QEMU could not be built ({tool} {verb}, exit {r.returncode}; "
                    f"'make qemu-afxdp' runs the same):\n{r.stderr[-3000:]}", pytrace=False)
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def guest_kernel():
    """The Debian 6.12 kernel the QEMU guests of tools/vm_guest.py boot (downloaded once into
    ~/.cache/nkframe/kernels)."""
    import sys

    sys.path.insert(0, os.path.normpath(os.path.join(os.path.dirname(QEMU_AFXDP_TOOL))))
    import vm_guest

    return vm_guest.guest_kernel("6.12")
