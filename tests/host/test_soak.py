"""Soak: 1,000 add/remove cycles through one Engine, no growth.

After a warm-up (imports, caches, the first probe), the process's open file descriptors must come
back to the same number, the kernel must hold no BPF program, map or link of ours, the node no
extra device, bpffs no pin, and the resident memory may grow by at most :data:`RSS_BOUND`.
Every 100th cycle checks with traffic that the endpoint still works.

``NKFRAME_SOAK_CYCLES`` changes the number of cycles (the issue asks for 1,000; ~60-100 s on a
2-core machine).
"""

from __future__ import annotations

import gc
import os
import time

import pytest
from agent_support import Counting, count_obj  # noqa: F401 - fixture

from tools import kobjects
from nkframe.engine import Engine
from nkframe.netlink import links
from nkframe.testing import udp_probe
from nkframe.types import EndpointSpec

pytestmark = pytest.mark.root

CYCLES = int(os.environ.get("NKFRAME_SOAK_CYCLES", "1000"))
WARMUP = 20
RSS_BOUND = 8 << 20  # bytes, measured after malloc_trim (glibc keeps freed arenas otherwise)
FD_BOUND = 0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss() -> int:
    import ctypes

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_soak_add_remove_cycles(node, bpffs_root, count_obj):
    eng = Engine(node.netns, bpffs_root, plugin_objects=[Counting()], autoload=False)
    pod = node.pod()
    links.add_address("lo", "10.77.50.1/32", netns=node.netns)
    spec = EndpointSpec(id="soak", netns=pod, addresses=["10.77.50.10/32"])
    node_devices = sorted(l.name for l in links.list_links(netns=node.netns))

    def cycle(i: int) -> None:
        ep = eng.add_endpoint(spec)
        if i % 100 == 0:
            links.add_route("10.77.50.1/32", dev="eth0", netns=pod, replace=True)
            links.add_host_route("10.77.50.10", ep.spec.node_ifname, netns=node.netns)
            assert udp_probe(pod, node.netns, "10.77.50.1", count=2) == 2, f"cycle {i}: no traffic"
        eng.remove_endpoint("soak")

    census = kobjects.Census.take()
    for i in range(WARMUP):
        cycle(i)
    gc.collect()
    fds0, rss0 = _fds(), _rss()
    t0 = time.monotonic()
    for i in range(CYCLES):
        cycle(i)
    elapsed = time.monotonic() - t0
    gc.collect()
    fds1, rss1 = _fds(), _rss()
    leaked = kobjects.settle(census, object_name=count_obj, timeout=10)
    print(f"\nsoak: {CYCLES} cycles in {elapsed:.1f} s ({1000 * elapsed / CYCLES:.1f} ms per add+remove); "
          f"fds {fds0} -> {fds1}; rss {rss0 >> 20} -> {rss1 >> 20} MiB; kernel objects now {kobjects.Census.take().counts()}")
    assert fds1 - fds0 <= FD_BOUND, f"open fds grew from {fds0} to {fds1}: {sorted(os.listdir('/proc/self/fd'))}"
    assert leaked == {}, f"BPF objects left after {CYCLES} cycles: {leaked}"
    assert sorted(l.name for l in links.list_links(netns=node.netns)) == node_devices
    assert [l.name for l in links.list_links(netns=pod)] == ["lo"]
    assert os.listdir(f"{bpffs_root}/endpoints") == []
    assert rss1 - rss0 <= RSS_BOUND, f"resident memory grew by {(rss1 - rss0) >> 10} KiB over {CYCLES} cycles"
