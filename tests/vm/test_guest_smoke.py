"""Smoke tests of the machine the root tier runs on: host, or a VM tier's guest.

They check what the rest of the root suite assumes: the kernel is the one the tier asked for,
a bpffs can be mounted, a veth pair can be made in a fresh netns, and netkit is there exactly
when the tier says so.  Everything happens in namespaces and mounts the test made itself.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
import uuid

import pytest

pytestmark = pytest.mark.root

IN_VM = os.environ.get("NKFRAME_VM") == "1"
SERIES = os.environ.get("NKFRAME_VM_SERIES", "")

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


@pytest.fixture
def netns():
    """A fresh named network namespace, removed afterwards even if the test failed."""
    pyroute2 = pytest.importorskip("pyroute2")
    name = f"nkvm-{uuid.uuid4().hex[:8]}"
    pyroute2.netns.create(name)
    try:
        yield name
    finally:
        pyroute2.netns.remove(name)


def test_kernel_is_the_tiers():
    if not IN_VM:
        pytest.skip("host tier: any kernel will do")
    expected = os.environ["NKFRAME_VM_RELEASE"]
    assert os.uname().release == expected
    assert expected.startswith(SERIES + ".")


def test_bpffs_mounts_privately():
    """A private bpffs mount in a child mount namespace (what the session fixtures do)."""
    pid = os.fork()
    if pid == 0:  # the child leaves our mount namespace untouched
        code = 1
        try:
            _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None),
                   "make / private")
            d = tempfile.mkdtemp(prefix="nkvm-bpffs-")
            _check(_libc.mount(b"bpf", d.encode(), b"bpf", 0, None), f"mount bpffs on {d}")
            with open("/proc/self/mounts") as f:
                code = 0 if any(line.split()[1] == d and line.split()[2] == "bpf"
                                for line in f) else 2
        except BaseException as e:  # report, never let the child run pytest on
            os.write(2, f"{e}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "bpffs could not be mounted (see stderr)"


def test_veth_pair_in_fresh_netns(netns):
    from pyroute2 import NetNS

    with NetNS(netns) as ns:
        ns.link("add", ifname="nkv0", kind="veth", peer={"ifname": "nkv1"})
        ns.link("set", index=ns.link_lookup(ifname="nkv0")[0], state="up")
        ns.link("set", index=ns.link_lookup(ifname="nkv1")[0], state="up")
        names = {link.get("ifname") for link in ns.get_links()}
        assert {"lo", "nkv0", "nkv1"} <= names


@pytest.fixture
def plain_pyroute2():
    """pyroute2 without link kinds registered from outside, restored afterwards.

    The registry is process-global and nkframe.netlink registers its own netkit kind when
    another test used it; these tests check the kernel, through pyroute2's defaults.
    """
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    data_map = ifinfmsg.ifinfo.data_map
    saved = data_map.pop("netkit", None)
    try:
        yield
    finally:
        if saved is not None:
            data_map["netkit"] = saved


def _netkit_add(ns) -> None:
    # Without IFLA_INFO_DATA the kernel makes a default pair (L3, pass) and names the peer.
    ns.link("add", ifname="nkx0", kind="netkit")


@pytest.mark.netkit
def test_netkit_pair_can_be_created(netns, plain_pyroute2):
    from pyroute2 import NetNS
    from pyroute2.netlink.exceptions import NetlinkError

    with NetNS(netns) as ns:
        try:
            _netkit_add(ns)
        except NetlinkError as e:
            if e.code == errno.EOPNOTSUPP:
                pytest.skip(f"kernel {os.uname().release} has no netkit (link add: EOPNOTSUPP)")
            raise
        links = {link.get("ifname"): link for link in ns.get_links()}
        assert "nkx0" in links
        kinds = {name: link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
                 for name, link in links.items()}
        assert kinds["nkx0"] == "netkit"
        assert sum(1 for k in kinds.values() if k == "netkit") == 2, kinds
        ns.link("del", index=links["nkx0"]["index"])  # takes the peer with it
        left = {link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") for link in ns.get_links()}
        assert "netkit" not in left


@pytest.mark.skipif(SERIES != "6.1", reason="only the vm-legacy tier's kernel must lack netkit")
def test_legacy_kernel_really_lacks_netkit(netns, plain_pyroute2):
    """The vm-legacy tier is only worth something if the fallback is forced for real."""
    from pyroute2 import NetNS
    from pyroute2.netlink.exceptions import NetlinkError

    with NetNS(netns) as ns, pytest.raises(NetlinkError) as info:
        _netkit_add(ns)
    assert info.value.code == errno.EOPNOTSUPP
