"""``nkframe vm-run``'s pure parts (plugins/nkframe_vm/launch.py, netdev.py): which user
arguments clash with the netdev it adds, the arguments it gives QEMU, and which QEMUs
``vm-netdev`` sends to it."""

from __future__ import annotations

import pytest

from nkframe.errors import InvalidSpec
from nkframe.qemu import QemuInfo
from nkframe_vm import launch, netdev

PLAN = launch.Launch("vm-a", "vmpod", "eth0", 2, "/sys/fs/bpf/x/vm_xsks", "/opt/q", "nk0",
                     "52:54:00:00:00:01", ("-m", "256"))


@pytest.mark.parametrize("args", [
    ["-netdev", "user,id=nk0"],
    ["--netdev", "tap,ifname=t0,id=nk0"],
    ["-netdev=user,id=nk0"],
    ["-device", "e1000,netdev=nk0"],
    ["-nic", "user,id=nk0"],
])
def test_arguments_that_use_the_netdev_id_are_refused(args):
    with pytest.raises(InvalidSpec, match="nk0"):
        launch.check_args(["-m", "256", *args], "nk0")


@pytest.mark.parametrize("args", [
    [],
    ["-netdev", "user,id=nk1", "-device", "e1000,netdev=nk1"],
    ["-netdev", "user,id=nk00"],
    ["-append", "id=nk0"],            # a value that only looks like it
    ["-netdev", "user,id=x,,id=nk0"],  # QEMU's ',,' escape: part of another value
])
def test_other_arguments_pass(args):
    launch.check_args(args, "nk0")


def test_argv_puts_the_user_arguments_first_then_the_sock_fds_netdev():
    assert PLAN.argv([7, 9]) == [
        "/opt/q", "-m", "256",
        "-netdev", "af-xdp,id=nk0,ifname=eth0,mode=native,force-copy=on,queues=2,start-queue=0,"
                   "inhibit=on,sock-fds=7:9",
        "-device", "virtio-net-pci,netdev=nk0,mac=52:54:00:00:00:01,mq=on,vectors=6"]


def test_one_fd_per_queue():
    with pytest.raises(InvalidSpec, match="one per queue"):
        PLAN.argv([7])


@pytest.mark.parametrize("version, netdevs, sock_fds_only", [
    ((9, 2, 0), {"af-xdp", "user"}, True),
    ((8, 2, 0), {"af-xdp"}, True),
    ((10, 0, 3), {"af-xdp"}, True),
    ((10, 1, 0), {"af-xdp"}, False),   # map-path
    ((9, 2, 0), {"user"}, False),      # no af-xdp: refused elsewhere
    ((7, 2, 0), {"user"}, False),
])
def test_which_qemu_goes_through_vm_run(version, netdevs, sock_fds_only):
    info = QemuInfo("/opt/q", version, frozenset(netdevs))
    assert netdev.sock_fds_only(info) is sock_fds_only


def test_vm_run_command():
    assert netdev.vm_run_command("vm-a", "/opt/q", "nk0") == \
        ["nkframe", "vm-run", "vm-a", "--qemu", "/opt/q", "--"]
    assert netdev.vm_run_command("vm-a", "/opt/q", "n1")[-3:] == ["--id", "n1", "--"]
